//! The store boundary (SPEC §9, §10): snapshots and the history archive.
//!
//! [`EmbeddedStore`] keeps both in a redb file for `quire serve`; a ScyllaDB
//! backend implements the same trait with the keyspace of SPEC §10.

use std::path::Path;
use std::sync::Arc;

use protocol::{decode_out_record, AppliedRecord, OutRecord, Snapshot};
use redb::{Database, TableDefinition};

/// `(doc, seq) -> applied record (JSON, as on the topic)`
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// `(doc, seq) -> snapshot (JSON)`
const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");

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

fn storage(e: impl std::fmt::Display) -> StoreError {
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
    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()>;
    /// The snapshot with the highest `seq <= at` (`u64::MAX`: the latest).
    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>>;
    async fn ping(&self) -> Result<()>;
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = Database::create(dir.join("store.redb")).map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        w.open_table(HISTORY).map_err(storage)?;
        w.open_table(SNAPSHOTS).map_err(storage)?;
        w.commit().map_err(storage)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
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

    fn decode(doc: &str, seq: u64, bytes: &[u8]) -> Result<AppliedRecord> {
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
        let rows: Vec<(String, u64, Vec<u8>)> = records
            .iter()
            .map(|r| (r.doc.clone(), r.seq, r.encode()))
            .collect();
        self.write(move |w| {
            let mut t = w.open_table(HISTORY).map_err(storage)?;
            for (doc, seq, bytes) in &rows {
                t.insert((doc.as_str(), *seq), bytes.as_slice())
                    .map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(HISTORY).map_err(storage)?;
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for item in t
            .range((doc, after + 1)..=(doc, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (k, v) = item.map_err(storage)?;
            out.push(Self::decode(doc, k.value().1, v.value())?);
        }
        Ok(out)
    }

    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(HISTORY).map_err(storage)?;
        let mut out = Vec::new();
        for item in t
            .range((doc, 0)..(doc, before))
            .map_err(storage)?
            .rev()
            .take(limit)
        {
            let (k, v) = item.map_err(storage)?;
            out.push(Self::decode(doc, k.value().1, v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(storage)?;
        let (doc, seq) = (snapshot.doc.clone(), snapshot.seq);
        self.write(move |w| {
            let mut t = w.open_table(SNAPSHOTS).map_err(storage)?;
            t.insert((doc.as_str(), seq), bytes.as_slice())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(SNAPSHOTS).map_err(storage)?;
        let mut range = t.range((doc, 0)..=(doc, at)).map_err(storage)?;
        match range.next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(storage)?;
                serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        doc: doc.into(),
                        seq: k.value().1,
                        reason: e.to_string(),
                    })
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        self.db.begin_read().map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(doc: &str, seq: u64) -> AppliedRecord {
        AppliedRecord {
            v: 1,
            doc: doc.into(),
            seq,
            prev: seq.saturating_sub(1),
            client: "c".into(),
            cseq: seq,
            base: 0,
            user: "u".into(),
            ts: 0,
            op: ot::Op::splice(0, 0, "x"),
            del: vec![],
        }
    }

    #[tokio::test]
    async fn history_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let rows: Vec<_> = [2, 5, 9, 12].iter().map(|&q| rec("d", q)).collect();
        s.put_history(&rows).await.unwrap();
        s.put_history(&[rec("d2", 3)]).await.unwrap();
        s.put_history(&rows[..1]).await.unwrap(); // idempotent
        let seqs = |v: Vec<AppliedRecord>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.history("d", 0, 10).await.unwrap()), [2, 5, 9, 12]);
        assert_eq!(seqs(s.history("d", 5, 2).await.unwrap()), [9, 12]);
        assert_eq!(seqs(s.history_before("d", 12, 2).await.unwrap()), [5, 9]);
        assert_eq!(seqs(s.history("d2", 0, 10).await.unwrap()), [3]);
        assert!(s
            .snapshot_at_or_before("d", u64::MAX)
            .await
            .unwrap()
            .is_none());
        for seq in [5, 12] {
            s.put_snapshot(&Snapshot {
                doc: "d".into(),
                seq,
                text: format!("t{seq}"),
                clients: vec![],
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.snapshot_at_or_before("d", u64::MAX)
                .await
                .unwrap()
                .unwrap()
                .seq,
            12
        );
        assert_eq!(
            s.snapshot_at_or_before("d", 11).await.unwrap().unwrap().seq,
            5
        );
        assert!(s.snapshot_at_or_before("d", 4).await.unwrap().is_none());
        assert!(s
            .snapshot_at_or_before("d2", u64::MAX)
            .await
            .unwrap()
            .is_none());
    }
}
