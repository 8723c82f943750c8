//! The store boundary (SPEC §9, §10): snapshots and the history archive.
//!
//! [`EmbeddedStore`] keeps both in a redb file for `quire serve`;
//! [`PostgresStore`] keeps them in PostgreSQL, where every role process of
//! a deployment can share them; a ScyllaDB backend will implement the same
//! trait with the keyspace of SPEC §10.

pub mod conformance;
mod intercept;
mod postgres;
pub mod scylla;

pub use intercept::{Call, Intercept, Intercepted};
pub use postgres::PostgresStore;
pub use scylla::ScyllaStore;

use std::path::Path;
use std::sync::Arc;

use protocol::packed::{pack_applied, unpack_applied, PACKED_V1};
use protocol::{decode_out_record, AppliedRecord, OutRecord, Snapshot};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Page cache of the redb file (redb's default is 1 GiB). Small: the store
/// is mostly written (history, snapshots) and read when a document loads,
/// and the kernel's page cache holds the file anyway; at 64 MiB it filled
/// with freshly written history (benches/README.md: memory).
const CACHE_BYTES: usize = 8 << 20;

/// `(doc, seq) -> applied record`, packed (`protocol::packed`); rows
/// written before that are JSON, as on the topic, and still read.
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// `(doc, client, cseq) -> seq`: finds an archived op by its id.
const OP_IDS: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("op_ids");
/// `(doc, seq, chunk) -> part of the snapshot's JSON`. Snapshots of large
/// documents are split so no row is larger than [`SNAPSHOT_CHUNK`].
const SNAPSHOT_CHUNKS: TableDefinition<(&str, u64, u32), &[u8]> =
    TableDefinition::new("snapshot_chunks");

/// Largest stored row of a snapshot by default, bytes.
pub const SNAPSHOT_CHUNK: usize = 256 << 10;

/// Snapshots kept per document: writing one drops those older than the
/// newest `KEEP_SNAPSHOTS`. History is never dropped, so time travel to an
/// older version still works (it replays from an older snapshot or from the
/// start), and a reload always finds the newest.
pub const KEEP_SNAPSHOTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt row for {doc}@{seq}: {reason}")]
    Corrupt {
        doc: String,
        seq: u64,
        reason: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Archives applied records (idempotent: a row is keyed by doc and seq).
    async fn put_history(&self, records: &[AppliedRecord]) -> Result<()>;
    /// Up to `limit` records of `doc` with `seq > after`, oldest first.
    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>>;
    /// The last `limit` records of `doc` with `seq < before`, oldest first.
    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>>;
    /// Stores a snapshot (idempotent), then drops the document's snapshots
    /// older than its newest [`KEEP_SNAPSHOTS`].
    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()>;
    /// The snapshot with the highest `seq <= at` (`u64::MAX`: the latest).
    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>>;
    /// The archived op `(client, cseq)` of `doc`, found through an index
    /// (never a scan of the document's history).
    async fn find_op(&self, doc: &str, client: &str, cseq: u64) -> Result<Option<AppliedRecord>>;
    /// Up to `limit` ids of documents with archived history, in byte order,
    /// after `after` (`""`: from the first). For `quire audit` and export.
    async fn documents(&self, after: &str, limit: usize) -> Result<Vec<String>>;
    async fn ping(&self) -> Result<()>;
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Largest snapshot row, bytes.
    chunk: usize,
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        // redb's default page cache is 1 GiB: bounded here, like every
        // other cache of the process.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("store.redb"))
            .map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        {
            let history = w.open_table(HISTORY).map_err(storage)?;
            let mut ids = w.open_table(OP_IDS).map_err(storage)?;
            w.open_table(SNAPSHOT_CHUNKS).map_err(storage)?;
            // A store written before the index existed gets it built once.
            if ids.is_empty().map_err(storage)? && !history.is_empty().map_err(storage)? {
                for item in history.iter().map_err(storage)? {
                    let (k, v) = item.map_err(storage)?;
                    let (doc, seq) = k.value();
                    let r = Self::decode(doc, seq, v.value())?;
                    ids.insert((doc, r.client.as_str(), r.cseq), seq)
                        .map_err(storage)?;
                }
            }
        }
        w.commit().map_err(storage)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            chunk: SNAPSHOT_CHUNK,
        })
    }

    /// Snapshot rows of at most `bytes` (at least 1 KiB), to stay under a
    /// record limit smaller than the default chunk.
    pub fn with_snapshot_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1024);
        self
    }

    /// One durable write transaction, on a blocking thread: its fsync must
    /// not stall the async runtime's workers.
    async fn write(
        &self,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let w = db.begin_write().map_err(storage)?;
            fill(&w)?;
            w.commit().map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// A read transaction on a blocking thread: a read that misses redb's
    /// cache waits for the disk, and must not hold up an async worker.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let r = db.begin_read().map_err(storage)?;
            f(&r)
        })
        .await
        .map_err(storage)?
    }

    pub(crate) fn decode(doc: &str, seq: u64, bytes: &[u8]) -> Result<AppliedRecord> {
        if bytes.first() == Some(&PACKED_V1) {
            return unpack_applied(doc, seq, bytes).map_err(|e| StoreError::Corrupt {
                doc: doc.into(),
                seq,
                reason: e.to_string(),
            });
        }
        match decode_out_record(bytes) {
            Ok(OutRecord::Applied(a)) => Ok(a),
            Ok(OutRecord::Rejected(_)) => Err(StoreError::Corrupt {
                doc: doc.into(),
                seq,
                reason: "history holds a rejection".into(),
            }),
            Err(e) => Err(StoreError::Corrupt {
                doc: doc.into(),
                seq,
                reason: e.to_string(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn put_history(&self, records: &[AppliedRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, u64, String, u64, Vec<u8>)> = records
            .iter()
            .map(|r| {
                (
                    r.doc.clone(),
                    r.seq,
                    r.client.clone(),
                    r.cseq,
                    pack_applied(r),
                )
            })
            .collect();
        self.write(move |w| {
            let mut t = w.open_table(HISTORY).map_err(storage)?;
            let mut ids = w.open_table(OP_IDS).map_err(storage)?;
            for (doc, seq, client, cseq, bytes) in &rows {
                t.insert((doc.as_str(), *seq), bytes.as_slice())
                    .map_err(storage)?;
                ids.insert((doc.as_str(), client.as_str(), *cseq), *seq)
                    .map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        let doc = doc.to_owned();
        self.read(move |r| {
            let t = r.open_table(HISTORY).map_err(storage)?;
            let mut out = Vec::new();
            for item in t
                .range((doc.as_str(), after + 1)..=(doc.as_str(), u64::MAX))
                .map_err(storage)?
                .take(limit)
            {
                let (k, v) = item.map_err(storage)?;
                out.push(Self::decode(&doc, k.value().1, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>> {
        let doc = doc.to_owned();
        self.read(move |r| {
            let t = r.open_table(HISTORY).map_err(storage)?;
            let mut out = Vec::new();
            for item in t
                .range((doc.as_str(), 0)..(doc.as_str(), before))
                .map_err(storage)?
                .rev()
                .take(limit)
            {
                let (k, v) = item.map_err(storage)?;
                out.push(Self::decode(&doc, k.value().1, v.value())?);
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(storage)?;
        let (doc, seq, chunk) = (snapshot.doc.clone(), snapshot.seq, self.chunk);
        self.write(move |w| {
            let mut t = w.open_table(SNAPSHOT_CHUNKS).map_err(storage)?;
            // A rewrite of the same snapshot may have had more chunks.
            t.retain_in(
                (doc.as_str(), seq, 0)..=(doc.as_str(), seq, u32::MAX),
                |_, _| false,
            )
            .map_err(storage)?;
            for (i, part) in bytes.chunks(chunk).enumerate() {
                t.insert((doc.as_str(), seq, i as u32), part)
                    .map_err(storage)?;
            }
            let mut seqs: Vec<u64> = Vec::new();
            for item in t
                .range((doc.as_str(), 0, 0)..=(doc.as_str(), u64::MAX, u32::MAX))
                .map_err(storage)?
                .rev()
            {
                let seq = item.map_err(storage)?.0.value().1;
                if seqs.last() != Some(&seq) {
                    seqs.push(seq);
                }
            }
            if let Some(&oldest_kept) = seqs.get(KEEP_SNAPSHOTS - 1) {
                t.retain_in(
                    (doc.as_str(), 0, 0)..(doc.as_str(), oldest_kept, 0),
                    |_, _| false,
                )
                .map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>> {
        let doc = doc.to_owned();
        self.read(move |r| {
            let t = r.open_table(SNAPSHOT_CHUNKS).map_err(storage)?;
            let newest = t
                .range((doc.as_str(), 0, 0)..=(doc.as_str(), at, u32::MAX))
                .map_err(storage)?
                .next_back();
            let seq = match newest {
                None => return Ok(None),
                Some(item) => item.map_err(storage)?.0.value().1,
            };
            let mut bytes = Vec::new();
            for item in t
                .range((doc.as_str(), seq, 0)..=(doc.as_str(), seq, u32::MAX))
                .map_err(storage)?
            {
                bytes.extend_from_slice(item.map_err(storage)?.1.value());
            }
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    doc: doc.clone(),
                    seq,
                    reason: e.to_string(),
                })
        })
        .await
    }

    async fn find_op(&self, doc: &str, client: &str, cseq: u64) -> Result<Option<AppliedRecord>> {
        let (doc, client) = (doc.to_owned(), client.to_owned());
        self.read(move |r| {
            let ids = r.open_table(OP_IDS).map_err(storage)?;
            let Some(seq) = ids
                .get((doc.as_str(), client.as_str(), cseq))
                .map_err(storage)?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            let t = r.open_table(HISTORY).map_err(storage)?;
            match t.get((doc.as_str(), seq)).map_err(storage)? {
                Some(v) => Self::decode(&doc, seq, v.value()).map(Some),
                None => Err(StoreError::Corrupt {
                    doc: doc.clone(),
                    seq,
                    reason: format!("indexed op {client}/{cseq} has no history row"),
                }),
            }
        })
        .await
    }

    async fn documents(&self, after: &str, limit: usize) -> Result<Vec<String>> {
        let after = after.to_owned();
        self.read(move |r| {
            let t = r.open_table(HISTORY).map_err(storage)?;
            let mut out: Vec<String> = Vec::new();
            // Skip from document to document: past every seq of the last.
            let mut from = after;
            while out.len() < limit {
                let next = t
                    .range((
                        std::ops::Bound::Excluded((from.as_str(), u64::MAX)),
                        std::ops::Bound::Unbounded,
                    ))
                    .map_err(storage)?
                    .next();
                let Some(item) = next else { break };
                let doc = item.map_err(storage)?.0.value().0.to_owned();
                from = doc.clone();
                out.push(doc);
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|_| Ok(())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::check(&s).await;
    }

    /// History is written packed; rows an older version wrote as JSON (as
    /// on the topic) still read, beside packed ones; a damaged row is an
    /// error naming it.
    #[tokio::test]
    async fn packed_and_json_rows_both_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let old = conformance::record("d", 1, "c", 1);
        let new = conformance::record("d", 2, "c", 2);
        let bad = conformance::record("d", 3, "c", 3);
        s.put_history(&[new.clone(), bad.clone()]).await.unwrap();
        {
            let w = s.db.begin_write().unwrap();
            {
                let mut t = w.open_table(HISTORY).unwrap();
                let row = t.get(("d", 2)).unwrap().unwrap().value().to_vec();
                assert_eq!(row[0], PACKED_V1);
                assert!(row.len() < new.encode().len());
                t.insert(("d", 1), old.encode().as_slice()).unwrap();
                let mut damaged = t.get(("d", 3)).unwrap().unwrap().value().to_vec();
                damaged.truncate(damaged.len() - 1);
                t.insert(("d", 3), damaged.as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        assert_eq!(s.history("d", 0, 2).await.unwrap(), vec![old, new]);
        match s.history("d", 2, 10).await {
            Err(StoreError::Corrupt { doc, seq, .. }) => assert_eq!((doc.as_str(), seq), ("d", 3)),
            other => panic!("a damaged row read as {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_op_index_is_built_for_an_older_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.put_history(&[conformance::record("d", 4, "c", 2)])
                .await
                .unwrap();
            // Forget the index, as a store from before it would lack it.
            let w = s.db.begin_write().unwrap();
            w.delete_table(OP_IDS).unwrap();
            w.commit().unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            s.find_op("d", "c", 2).await.unwrap().map(|r| r.seq),
            Some(4)
        );
    }
}
