//! [`ScyllaStore`]: history and snapshots in ScyllaDB (or Cassandra), the
//! schema of SPEC §10 with the bucketing and chunking it leaves open.
//!
//! Tables (keyspace `quire` by default, created if absent):
//!
//! - `history ((doc, bucket), seq) → record`: a document's applied records,
//!   partitioned by `bucket = seq >> 16`. Seqs are offsets of one log
//!   partition, unique, so a partition holds at most 65,536 records however
//!   busy the document: partitions stay bounded.
//! - `history_buckets (doc, bucket)`: the buckets a document has records in.
//!   A rarely edited document in a busy partition has sparse seqs, and
//!   "history after seq" walks only its non-empty buckets, never a scan.
//! - `ops_by_id ((doc, client), cseq) → seq`: finds `(client, cseq)`.
//! - `snapshots (doc, seq, chunk) → data`: a snapshot's JSON in chunks
//!   (≤ 256 KiB each, far under ScyllaDB's row and cell limits), and
//!   `snapshot_index (doc, seq) → chunks`, clustered by `seq DESC`, written
//!   after every chunk: "newest at or before seq" is one `LIMIT 1` read, and
//!   a snapshot is visible only once whole. A rewrite of the same snapshot
//!   upserts its chunks, then the index (no delete that could shadow it);
//!   readers take exactly `chunks` chunks.
//! - `documents (shard, doc)`: the document ids, in 16 shards, for listing.
//!
//! Pruning: a document keeps its newest [`KEEP_SNAPSHOTS`] snapshots (older
//! ones are deleted with one range delete); history is never pruned, so
//! time travel to any version works from the oldest snapshot or from the
//! start.
//!
//! Consistency: every read and write is `LOCAL_QUORUM`, so a role reading a
//! document sees what the compactor wrote (quorum reads overlap quorum
//! writes in the local data centre). Write timestamps come from the client
//! (monotonic), not from coordinators' clocks. Reads are paged by the driver
//! (64 rows a page: history rows and snapshot chunks can be large).
//!
//! The queries go through [`Tables`]: [`CqlTables`] runs them as prepared
//! CQL statements; the unit tests run the same store logic (bucket walks,
//! paging, chunking, pruning) on an in-memory model of the tables.

use std::collections::BTreeSet;

use protocol::{AppliedRecord, Snapshot};

use crate::{storage, Result, Store, StoreError, KEEP_SNAPSHOTS, SNAPSHOT_CHUNK};

/// Offsets per history bucket (as a shift).
pub const BUCKET_SHIFT: u32 = 16;
/// Shards of the `documents` table.
pub const DOC_SHARDS: i32 = 16;
/// Buckets read per step of a walk.
const BUCKET_PAGE: i32 = 64;
/// Rows per page of a paged read.
const PAGE_ROWS: i32 = 64;

pub fn bucket_of(seq: u64) -> i32 {
    (seq >> BUCKET_SHIFT) as i32
}

fn shard_of(doc: &str) -> i32 {
    (fnv1a(doc) % DOC_SHARDS as u32) as i32
}

/// FNV-1a: a stable spread of ids over shards.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn seq_i64(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

/// The statements the store needs, one method each.
#[async_trait::async_trait]
pub trait Tables: Send + Sync + 'static {
    async fn insert_history(&self, doc: &str, bucket: i32, seq: i64, record: &[u8]) -> Result<()>;
    async fn insert_bucket(&self, doc: &str, bucket: i32) -> Result<()>;
    async fn insert_op_id(&self, doc: &str, client: &str, cseq: i64, seq: i64) -> Result<()>;
    async fn insert_document(&self, shard: i32, doc: &str) -> Result<()>;
    /// Buckets of `doc` `>= from`, ascending, at most `limit`.
    async fn buckets_from(&self, doc: &str, from: i32, limit: i32) -> Result<Vec<i32>>;
    /// Buckets of `doc` `<= to`, descending, at most `limit`.
    async fn buckets_to(&self, doc: &str, to: i32, limit: i32) -> Result<Vec<i32>>;
    /// Records of one bucket with `seq > after`, ascending.
    async fn history_after(
        &self,
        doc: &str,
        bucket: i32,
        after: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>>;
    /// Records of one bucket with `seq < before`, descending.
    async fn history_before(
        &self,
        doc: &str,
        bucket: i32,
        before: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>>;
    async fn history_at(&self, doc: &str, bucket: i32, seq: i64) -> Result<Option<Vec<u8>>>;
    async fn op_seq(&self, doc: &str, client: &str, cseq: i64) -> Result<Option<i64>>;
    /// The newest indexed snapshot `<= at`: its seq and chunk count.
    async fn snapshot_index_at(&self, doc: &str, at: i64) -> Result<Option<(i64, i32)>>;
    /// The first `chunks` chunks of a snapshot, in order.
    async fn snapshot_chunks(&self, doc: &str, seq: i64, chunks: i32) -> Result<Vec<Vec<u8>>>;
    async fn insert_chunk(&self, doc: &str, seq: i64, chunk: i32, data: &[u8]) -> Result<()>;
    async fn insert_snapshot_index(&self, doc: &str, seq: i64, chunks: i32) -> Result<()>;
    /// Every indexed snapshot seq of `doc`, newest first.
    async fn snapshot_seqs(&self, doc: &str) -> Result<Vec<i64>>;
    /// Drops the index entries, then the chunks, of snapshots `< seq`.
    async fn delete_snapshots_before(&self, doc: &str, seq: i64) -> Result<()>;
    /// Document ids of a shard `> after`, ascending.
    async fn documents(&self, shard: i32, after: &str, limit: i32) -> Result<Vec<String>>;
    async fn ping(&self) -> Result<()>;
}

/// Shared tables are tables (tests keep a handle to inspect the model).
#[async_trait::async_trait]
impl<T: Tables> Tables for std::sync::Arc<T> {
    async fn insert_history(&self, doc: &str, bucket: i32, seq: i64, record: &[u8]) -> Result<()> {
        (**self).insert_history(doc, bucket, seq, record).await
    }
    async fn insert_bucket(&self, doc: &str, bucket: i32) -> Result<()> {
        (**self).insert_bucket(doc, bucket).await
    }
    async fn insert_op_id(&self, doc: &str, client: &str, cseq: i64, seq: i64) -> Result<()> {
        (**self).insert_op_id(doc, client, cseq, seq).await
    }
    async fn insert_document(&self, shard: i32, doc: &str) -> Result<()> {
        (**self).insert_document(shard, doc).await
    }
    async fn buckets_from(&self, doc: &str, from: i32, limit: i32) -> Result<Vec<i32>> {
        (**self).buckets_from(doc, from, limit).await
    }
    async fn buckets_to(&self, doc: &str, to: i32, limit: i32) -> Result<Vec<i32>> {
        (**self).buckets_to(doc, to, limit).await
    }
    async fn history_after(
        &self,
        doc: &str,
        bucket: i32,
        after: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        (**self).history_after(doc, bucket, after, limit).await
    }
    async fn history_before(
        &self,
        doc: &str,
        bucket: i32,
        before: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        (**self).history_before(doc, bucket, before, limit).await
    }
    async fn history_at(&self, doc: &str, bucket: i32, seq: i64) -> Result<Option<Vec<u8>>> {
        (**self).history_at(doc, bucket, seq).await
    }
    async fn op_seq(&self, doc: &str, client: &str, cseq: i64) -> Result<Option<i64>> {
        (**self).op_seq(doc, client, cseq).await
    }
    async fn snapshot_index_at(&self, doc: &str, at: i64) -> Result<Option<(i64, i32)>> {
        (**self).snapshot_index_at(doc, at).await
    }
    async fn snapshot_chunks(&self, doc: &str, seq: i64, chunks: i32) -> Result<Vec<Vec<u8>>> {
        (**self).snapshot_chunks(doc, seq, chunks).await
    }
    async fn insert_chunk(&self, doc: &str, seq: i64, chunk: i32, data: &[u8]) -> Result<()> {
        (**self).insert_chunk(doc, seq, chunk, data).await
    }
    async fn insert_snapshot_index(&self, doc: &str, seq: i64, chunks: i32) -> Result<()> {
        (**self).insert_snapshot_index(doc, seq, chunks).await
    }
    async fn snapshot_seqs(&self, doc: &str) -> Result<Vec<i64>> {
        (**self).snapshot_seqs(doc).await
    }
    async fn delete_snapshots_before(&self, doc: &str, seq: i64) -> Result<()> {
        (**self).delete_snapshots_before(doc, seq).await
    }
    async fn documents(&self, shard: i32, after: &str, limit: i32) -> Result<Vec<String>> {
        (**self).documents(shard, after, limit).await
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
}

pub struct ScyllaStore<T: Tables = CqlTables> {
    tables: T,
    chunk: usize,
}

impl<T: Tables> ScyllaStore<T> {
    pub fn on(tables: T) -> Self {
        ScyllaStore {
            tables,
            chunk: SNAPSHOT_CHUNK,
        }
    }

    /// Snapshot chunks of at most `bytes` (at least 1 KiB).
    pub fn with_snapshot_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1024);
        self
    }

    fn decode(doc: &str, seq: i64, bytes: &[u8]) -> Result<AppliedRecord> {
        crate::EmbeddedStore::decode(doc, seq as u64, bytes)
    }
}

impl ScyllaStore<CqlTables> {
    /// Connects to `nodes` (`host:port,…`), creating the keyspace (with
    /// `replication_factor`, NetworkTopologyStrategy) and tables if absent.
    pub async fn connect(nodes: &str, keyspace: &str, replication_factor: u32) -> Result<Self> {
        Ok(ScyllaStore::on(
            CqlTables::connect(nodes, keyspace, replication_factor).await?,
        ))
    }
}

#[async_trait::async_trait]
impl<T: Tables> Store for ScyllaStore<T> {
    async fn put_history(&self, records: &[AppliedRecord]) -> Result<()> {
        let mut buckets = BTreeSet::new();
        let mut docs = BTreeSet::new();
        for r in records {
            let (seq, bucket) = (seq_i64(r.seq), bucket_of(r.seq));
            // Idempotent upserts: the record, then what finds it.
            self.tables
                .insert_history(&r.doc, bucket, seq, &r.encode())
                .await?;
            self.tables
                .insert_op_id(&r.doc, &r.client, r.cseq as i64, seq)
                .await?;
            buckets.insert((r.doc.as_str(), bucket));
            docs.insert(r.doc.as_str());
        }
        for (doc, bucket) in buckets {
            self.tables.insert_bucket(doc, bucket).await?;
        }
        for doc in docs {
            self.tables.insert_document(shard_of(doc), doc).await?;
        }
        Ok(())
    }

    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>> {
        let mut out = Vec::new();
        if after == u64::MAX || limit == 0 {
            return Ok(out);
        }
        let mut from = bucket_of(after);
        'walk: loop {
            let buckets = self.tables.buckets_from(doc, from, BUCKET_PAGE).await?;
            for &b in &buckets {
                let want = (limit - out.len()).min(i32::MAX as usize) as i32;
                for (seq, bytes) in self
                    .tables
                    .history_after(doc, b, seq_i64(after), want)
                    .await?
                {
                    out.push(Self::decode(doc, seq, &bytes)?);
                }
                if out.len() >= limit {
                    break 'walk;
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() as i32 == BUCKET_PAGE => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>> {
        let mut out = Vec::new();
        if before == 0 || limit == 0 {
            return Ok(out);
        }
        let mut to = bucket_of(before);
        'walk: loop {
            let buckets = self.tables.buckets_to(doc, to, BUCKET_PAGE).await?;
            for &b in &buckets {
                let want = (limit - out.len()).min(i32::MAX as usize) as i32;
                for (seq, bytes) in self
                    .tables
                    .history_before(doc, b, seq_i64(before), want)
                    .await?
                {
                    out.push(Self::decode(doc, seq, &bytes)?);
                }
                if out.len() >= limit {
                    break 'walk;
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() as i32 == BUCKET_PAGE && last > 0 => to = last - 1,
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(storage)?;
        let (doc, seq) = (snapshot.doc.as_str(), seq_i64(snapshot.seq));
        let mut chunks = 0;
        for (i, part) in bytes.chunks(self.chunk).enumerate() {
            self.tables.insert_chunk(doc, seq, i as i32, part).await?;
            chunks += 1;
        }
        // Visible once whole.
        self.tables.insert_snapshot_index(doc, seq, chunks).await?;
        // The pruning rule: the newest KEEP_SNAPSHOTS stay.
        let seqs = self.tables.snapshot_seqs(doc).await?;
        if seqs.len() > KEEP_SNAPSHOTS {
            self.tables
                .delete_snapshots_before(doc, seqs[KEEP_SNAPSHOTS - 1])
                .await?;
        }
        Ok(())
    }

    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>> {
        // A snapshot pruned between the index read and the chunk read is
        // looked up again (the index then names a newer one).
        for _ in 0..3 {
            let Some((seq, chunks)) = self.tables.snapshot_index_at(doc, seq_i64(at)).await? else {
                return Ok(None);
            };
            let parts = self.tables.snapshot_chunks(doc, seq, chunks).await?;
            if parts.len() != chunks as usize {
                continue;
            }
            let bytes: Vec<u8> = parts.into_iter().flatten().collect();
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    doc: doc.to_owned(),
                    seq: seq as u64,
                    reason: format!("snapshot: {e}"),
                });
        }
        Err(StoreError::Storage(format!(
            "{doc}: the snapshot at or before {at} kept changing while read"
        )))
    }

    async fn find_op(&self, doc: &str, client: &str, cseq: u64) -> Result<Option<AppliedRecord>> {
        let Some(seq) = self.tables.op_seq(doc, client, cseq as i64).await? else {
            return Ok(None);
        };
        match self
            .tables
            .history_at(doc, bucket_of(seq as u64), seq)
            .await?
        {
            Some(bytes) => Self::decode(doc, seq, &bytes).map(Some),
            None => Err(StoreError::Corrupt {
                doc: doc.to_owned(),
                seq: seq as u64,
                reason: "indexed op has no history row".into(),
            }),
        }
    }

    async fn documents(&self, after: &str, limit: usize) -> Result<Vec<String>> {
        // Each shard is in order; merge them.
        let mut all = BTreeSet::new();
        for shard in 0..DOC_SHARDS {
            all.extend(
                self.tables
                    .documents(shard, after, limit.min(i32::MAX as usize) as i32)
                    .await?,
            );
        }
        Ok(all.into_iter().take(limit).collect())
    }

    async fn ping(&self) -> Result<()> {
        self.tables.ping().await
    }
}

/// The tables as prepared CQL statements on a ScyllaDB session.
pub struct CqlTables {
    session: scylla::client::session::Session,
    st: Statements,
}

struct Statements {
    insert_history: scylla::statement::prepared::PreparedStatement,
    insert_bucket: scylla::statement::prepared::PreparedStatement,
    insert_op_id: scylla::statement::prepared::PreparedStatement,
    insert_document: scylla::statement::prepared::PreparedStatement,
    buckets_from: scylla::statement::prepared::PreparedStatement,
    buckets_to: scylla::statement::prepared::PreparedStatement,
    history_after: scylla::statement::prepared::PreparedStatement,
    history_before: scylla::statement::prepared::PreparedStatement,
    history_at: scylla::statement::prepared::PreparedStatement,
    op_seq: scylla::statement::prepared::PreparedStatement,
    snapshot_index_at: scylla::statement::prepared::PreparedStatement,
    snapshot_chunks: scylla::statement::prepared::PreparedStatement,
    insert_chunk: scylla::statement::prepared::PreparedStatement,
    insert_snapshot_index: scylla::statement::prepared::PreparedStatement,
    snapshot_seqs: scylla::statement::prepared::PreparedStatement,
    delete_index_before: scylla::statement::prepared::PreparedStatement,
    delete_snapshots_before: scylla::statement::prepared::PreparedStatement,
    documents: scylla::statement::prepared::PreparedStatement,
    ping: scylla::statement::prepared::PreparedStatement,
}

/// The schema, `{ks}` standing for the keyspace.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.history (doc text, bucket int, seq bigint, record blob, PRIMARY KEY ((doc, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC)",
    "CREATE TABLE IF NOT EXISTS {ks}.history_buckets (doc text, bucket int, PRIMARY KEY (doc, bucket)) WITH CLUSTERING ORDER BY (bucket ASC)",
    "CREATE TABLE IF NOT EXISTS {ks}.ops_by_id (doc text, client text, cseq bigint, seq bigint, PRIMARY KEY ((doc, client), cseq))",
    "CREATE TABLE IF NOT EXISTS {ks}.snapshots (doc text, seq bigint, chunk int, data blob, PRIMARY KEY (doc, seq, chunk)) WITH CLUSTERING ORDER BY (seq DESC, chunk ASC)",
    "CREATE TABLE IF NOT EXISTS {ks}.snapshot_index (doc text, seq bigint, chunks int, PRIMARY KEY (doc, seq)) WITH CLUSTERING ORDER BY (seq DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.documents (shard int, doc text, PRIMARY KEY (shard, doc)) WITH CLUSTERING ORDER BY (doc ASC)",
];

impl CqlTables {
    pub async fn connect(nodes: &str, keyspace: &str, replication_factor: u32) -> Result<Self> {
        use scylla::client::session_builder::SessionBuilder;
        if !keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || keyspace.is_empty()
        {
            return Err(StoreError::Storage(format!(
                "keyspace {keyspace:?}: letters, digits and _ only"
            )));
        }
        let session = SessionBuilder::new()
            .known_nodes(nodes.split(',').map(str::trim).filter(|n| !n.is_empty()))
            .timestamp_generator(std::sync::Arc::new(
                scylla::policies::timestamp_generator::MonotonicTimestampGenerator::new(),
            ))
            .connection_timeout(std::time::Duration::from_secs(10))
            .build()
            .await
            .map_err(|e| StoreError::Storage(format!("connecting to ScyllaDB at {nodes}: {e}")))?;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
                ),
                &[],
            )
            .await
            .map_err(storage)?;
        for ddl in SCHEMA {
            session
                .query_unpaged(ddl.replace("{ks}", keyspace), &[])
                .await
                .map_err(storage)?;
        }
        session.await_schema_agreement().await.map_err(storage)?;
        let ks = keyspace;
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut p = session.prepare(cql).await.map_err(storage)?;
                p.set_consistency(scylla::statement::Consistency::LocalQuorum);
                p.set_page_size(PAGE_ROWS);
                Ok::<_, StoreError>(p)
            }
        };
        let st = Statements {
            insert_history: prepare(format!("INSERT INTO {ks}.history (doc, bucket, seq, record) VALUES (?, ?, ?, ?)")).await?,
            insert_bucket: prepare(format!("INSERT INTO {ks}.history_buckets (doc, bucket) VALUES (?, ?)")).await?,
            insert_op_id: prepare(format!("INSERT INTO {ks}.ops_by_id (doc, client, cseq, seq) VALUES (?, ?, ?, ?)")).await?,
            insert_document: prepare(format!("INSERT INTO {ks}.documents (shard, doc) VALUES (?, ?)")).await?,
            buckets_from: prepare(format!("SELECT bucket FROM {ks}.history_buckets WHERE doc = ? AND bucket >= ? ORDER BY bucket ASC LIMIT ?")).await?,
            buckets_to: prepare(format!("SELECT bucket FROM {ks}.history_buckets WHERE doc = ? AND bucket <= ? ORDER BY bucket DESC LIMIT ?")).await?,
            history_after: prepare(format!("SELECT seq, record FROM {ks}.history WHERE doc = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?")).await?,
            history_before: prepare(format!("SELECT seq, record FROM {ks}.history WHERE doc = ? AND bucket = ? AND seq < ? ORDER BY seq DESC LIMIT ?")).await?,
            history_at: prepare(format!("SELECT record FROM {ks}.history WHERE doc = ? AND bucket = ? AND seq = ?")).await?,
            op_seq: prepare(format!("SELECT seq FROM {ks}.ops_by_id WHERE doc = ? AND client = ? AND cseq = ?")).await?,
            snapshot_index_at: prepare(format!("SELECT seq, chunks FROM {ks}.snapshot_index WHERE doc = ? AND seq <= ? LIMIT 1")).await?,
            snapshot_chunks: prepare(format!("SELECT data FROM {ks}.snapshots WHERE doc = ? AND seq = ? AND chunk < ?")).await?,
            insert_chunk: prepare(format!("INSERT INTO {ks}.snapshots (doc, seq, chunk, data) VALUES (?, ?, ?, ?)")).await?,
            insert_snapshot_index: prepare(format!("INSERT INTO {ks}.snapshot_index (doc, seq, chunks) VALUES (?, ?, ?)")).await?,
            snapshot_seqs: prepare(format!("SELECT seq FROM {ks}.snapshot_index WHERE doc = ?")).await?,
            delete_index_before: prepare(format!("DELETE FROM {ks}.snapshot_index WHERE doc = ? AND seq < ?")).await?,
            delete_snapshots_before: prepare(format!("DELETE FROM {ks}.snapshots WHERE doc = ? AND seq < ?")).await?,
            documents: prepare(format!("SELECT doc FROM {ks}.documents WHERE shard = ? AND doc > ? ORDER BY doc ASC LIMIT ?")).await?,
            ping: prepare("SELECT release_version FROM system.local".to_owned()).await?,
        };
        Ok(CqlTables { session, st })
    }

    /// Drops a keyspace (tests clean up with it).
    pub async fn drop_keyspace(&self, keyspace: &str) -> Result<()> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
            .await
            .map(drop)
            .map_err(storage)
    }

    async fn exec(
        &self,
        st: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<scylla::response::query_result::QueryResult> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(storage)
    }

    /// Every row of a (paged) read.
    async fn rows<R>(
        &self,
        st: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        use futures_util::StreamExt;
        let pager = self
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(storage)?;
        let mut stream = pager.rows_stream::<R>().map_err(storage)?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await {
            out.push(row.map_err(storage)?);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Tables for CqlTables {
    async fn insert_history(&self, doc: &str, bucket: i32, seq: i64, record: &[u8]) -> Result<()> {
        self.exec(&self.st.insert_history, (doc, bucket, seq, record))
            .await
            .map(drop)
    }
    async fn insert_bucket(&self, doc: &str, bucket: i32) -> Result<()> {
        self.exec(&self.st.insert_bucket, (doc, bucket))
            .await
            .map(drop)
    }
    async fn insert_op_id(&self, doc: &str, client: &str, cseq: i64, seq: i64) -> Result<()> {
        self.exec(&self.st.insert_op_id, (doc, client, cseq, seq))
            .await
            .map(drop)
    }
    async fn insert_document(&self, shard: i32, doc: &str) -> Result<()> {
        self.exec(&self.st.insert_document, (shard, doc))
            .await
            .map(drop)
    }
    async fn buckets_from(&self, doc: &str, from: i32, limit: i32) -> Result<Vec<i32>> {
        let rows: Vec<(i32,)> = self.rows(&self.st.buckets_from, (doc, from, limit)).await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }
    async fn buckets_to(&self, doc: &str, to: i32, limit: i32) -> Result<Vec<i32>> {
        let rows: Vec<(i32,)> = self.rows(&self.st.buckets_to, (doc, to, limit)).await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }
    async fn history_after(
        &self,
        doc: &str,
        bucket: i32,
        after: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        self.rows(&self.st.history_after, (doc, bucket, after, limit))
            .await
    }
    async fn history_before(
        &self,
        doc: &str,
        bucket: i32,
        before: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        self.rows(&self.st.history_before, (doc, bucket, before, limit))
            .await
    }
    async fn history_at(&self, doc: &str, bucket: i32, seq: i64) -> Result<Option<Vec<u8>>> {
        let rows: Vec<(Vec<u8>,)> = self.rows(&self.st.history_at, (doc, bucket, seq)).await?;
        Ok(rows.into_iter().next().map(|(r,)| r))
    }
    async fn op_seq(&self, doc: &str, client: &str, cseq: i64) -> Result<Option<i64>> {
        let rows: Vec<(i64,)> = self.rows(&self.st.op_seq, (doc, client, cseq)).await?;
        Ok(rows.into_iter().next().map(|(s,)| s))
    }
    async fn snapshot_index_at(&self, doc: &str, at: i64) -> Result<Option<(i64, i32)>> {
        let rows: Vec<(i64, i32)> = self.rows(&self.st.snapshot_index_at, (doc, at)).await?;
        Ok(rows.into_iter().next())
    }
    async fn snapshot_chunks(&self, doc: &str, seq: i64, chunks: i32) -> Result<Vec<Vec<u8>>> {
        let rows: Vec<(Vec<u8>,)> = self
            .rows(&self.st.snapshot_chunks, (doc, seq, chunks))
            .await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
    async fn insert_chunk(&self, doc: &str, seq: i64, chunk: i32, data: &[u8]) -> Result<()> {
        self.exec(&self.st.insert_chunk, (doc, seq, chunk, data))
            .await
            .map(drop)
    }
    async fn insert_snapshot_index(&self, doc: &str, seq: i64, chunks: i32) -> Result<()> {
        self.exec(&self.st.insert_snapshot_index, (doc, seq, chunks))
            .await
            .map(drop)
    }
    async fn snapshot_seqs(&self, doc: &str) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = self.rows(&self.st.snapshot_seqs, (doc,)).await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }
    async fn delete_snapshots_before(&self, doc: &str, seq: i64) -> Result<()> {
        self.exec(&self.st.delete_index_before, (doc, seq)).await?;
        self.exec(&self.st.delete_snapshots_before, (doc, seq))
            .await
            .map(drop)
    }
    async fn documents(&self, shard: i32, after: &str, limit: i32) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self.rows(&self.st.documents, (shard, after, limit)).await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
    async fn ping(&self) -> Result<()> {
        self.exec(&self.st.ping, ()).await.map(drop)
    }
}

/// An in-memory model of the tables (the CQL semantics the store relies
/// on: clustering order, range reads and deletes, upserts), so the store's
/// own logic is tested without a ScyllaDB node.
pub mod model {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::Tables;
    use crate::Result;

    #[derive(Default)]
    pub struct ModelTables {
        history: Mutex<BTreeMap<(String, i32, i64), Vec<u8>>>,
        buckets: Mutex<BTreeMap<(String, i32), ()>>,
        ops: Mutex<BTreeMap<(String, String, i64), i64>>,
        snapshots: Mutex<BTreeMap<(String, i64, i32), Vec<u8>>>,
        index: Mutex<BTreeMap<(String, i64), i32>>,
        documents: Mutex<BTreeMap<(i32, String), ()>>,
        /// Rows the history reads returned, for the no-scan checks.
        pub history_rows_read: std::sync::atomic::AtomicU64,
        pub bucket_reads: std::sync::atomic::AtomicU64,
    }

    fn take<T>(it: impl Iterator<Item = T>, limit: i32) -> Vec<T> {
        it.take(limit.max(0) as usize).collect()
    }

    #[async_trait::async_trait]
    impl Tables for ModelTables {
        async fn insert_history(
            &self,
            doc: &str,
            bucket: i32,
            seq: i64,
            record: &[u8],
        ) -> Result<()> {
            self.history
                .lock()
                .unwrap()
                .insert((doc.into(), bucket, seq), record.to_vec());
            Ok(())
        }
        async fn insert_bucket(&self, doc: &str, bucket: i32) -> Result<()> {
            self.buckets
                .lock()
                .unwrap()
                .insert((doc.into(), bucket), ());
            Ok(())
        }
        async fn insert_op_id(&self, doc: &str, client: &str, cseq: i64, seq: i64) -> Result<()> {
            self.ops
                .lock()
                .unwrap()
                .insert((doc.into(), client.into(), cseq), seq);
            Ok(())
        }
        async fn insert_document(&self, shard: i32, doc: &str) -> Result<()> {
            self.documents
                .lock()
                .unwrap()
                .insert((shard, doc.into()), ());
            Ok(())
        }
        async fn buckets_from(&self, doc: &str, from: i32, limit: i32) -> Result<Vec<i32>> {
            self.bucket_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let b = self.buckets.lock().unwrap();
            Ok(take(
                b.range((doc.to_owned(), from)..=(doc.to_owned(), i32::MAX))
                    .map(|((_, k), _)| *k),
                limit,
            ))
        }
        async fn buckets_to(&self, doc: &str, to: i32, limit: i32) -> Result<Vec<i32>> {
            self.bucket_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let b = self.buckets.lock().unwrap();
            Ok(take(
                b.range((doc.to_owned(), i32::MIN)..=(doc.to_owned(), to))
                    .rev()
                    .map(|((_, k), _)| *k),
                limit,
            ))
        }
        async fn history_after(
            &self,
            doc: &str,
            bucket: i32,
            after: i64,
            limit: i32,
        ) -> Result<Vec<(i64, Vec<u8>)>> {
            let h = self.history.lock().unwrap();
            let rows = take(
                h.range(
                    (doc.to_owned(), bucket, after.saturating_add(1))
                        ..=(doc.to_owned(), bucket, i64::MAX),
                )
                .map(|((_, _, s), r)| (*s, r.clone())),
                limit,
            );
            self.history_rows_read
                .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(rows)
        }
        async fn history_before(
            &self,
            doc: &str,
            bucket: i32,
            before: i64,
            limit: i32,
        ) -> Result<Vec<(i64, Vec<u8>)>> {
            let h = self.history.lock().unwrap();
            let rows = take(
                h.range((doc.to_owned(), bucket, i64::MIN)..(doc.to_owned(), bucket, before))
                    .rev()
                    .map(|((_, _, s), r)| (*s, r.clone())),
                limit,
            );
            self.history_rows_read
                .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(rows)
        }
        async fn history_at(&self, doc: &str, bucket: i32, seq: i64) -> Result<Option<Vec<u8>>> {
            Ok(self
                .history
                .lock()
                .unwrap()
                .get(&(doc.into(), bucket, seq))
                .cloned())
        }
        async fn op_seq(&self, doc: &str, client: &str, cseq: i64) -> Result<Option<i64>> {
            Ok(self
                .ops
                .lock()
                .unwrap()
                .get(&(doc.into(), client.into(), cseq))
                .copied())
        }
        async fn snapshot_index_at(&self, doc: &str, at: i64) -> Result<Option<(i64, i32)>> {
            let idx = self.index.lock().unwrap();
            Ok(idx
                .range((doc.to_owned(), i64::MIN)..=(doc.to_owned(), at))
                .next_back()
                .map(|((_, q), c)| (*q, *c)))
        }
        async fn snapshot_chunks(&self, doc: &str, seq: i64, chunks: i32) -> Result<Vec<Vec<u8>>> {
            let s = self.snapshots.lock().unwrap();
            Ok(
                s.range((doc.to_owned(), seq, 0)..(doc.to_owned(), seq, chunks.max(0)))
                    .map(|(_, d)| d.clone())
                    .collect(),
            )
        }
        async fn insert_chunk(&self, doc: &str, seq: i64, chunk: i32, data: &[u8]) -> Result<()> {
            self.snapshots
                .lock()
                .unwrap()
                .insert((doc.into(), seq, chunk), data.to_vec());
            Ok(())
        }
        async fn insert_snapshot_index(&self, doc: &str, seq: i64, chunks: i32) -> Result<()> {
            self.index.lock().unwrap().insert((doc.into(), seq), chunks);
            Ok(())
        }
        async fn snapshot_seqs(&self, doc: &str) -> Result<Vec<i64>> {
            let idx = self.index.lock().unwrap();
            // Clustered by seq DESC.
            Ok(idx
                .range((doc.to_owned(), i64::MIN)..=(doc.to_owned(), i64::MAX))
                .rev()
                .map(|((_, q), _)| *q)
                .collect())
        }
        async fn delete_snapshots_before(&self, doc: &str, seq: i64) -> Result<()> {
            self.index
                .lock()
                .unwrap()
                .retain(|(d, q), _| !(d == doc && *q < seq));
            self.snapshots
                .lock()
                .unwrap()
                .retain(|(d, q, _), _| !(d == doc && *q < seq));
            Ok(())
        }
        async fn documents(&self, shard: i32, after: &str, limit: i32) -> Result<Vec<String>> {
            let d = self.documents.lock().unwrap();
            Ok(take(
                d.keys()
                    .filter(|(s, doc)| *s == shard && doc.as_str() > after)
                    .map(|(_, doc)| doc.clone()),
                limit,
            ))
        }
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::model::ModelTables;
    use super::*;

    #[tokio::test]
    async fn the_store_logic_conforms_on_a_model_of_the_tables() {
        let s = ScyllaStore::on(ModelTables::default());
        crate::conformance::check(&s).await;
    }

    /// A snapshot is visible only once its index row is written, and a
    /// rewrite with fewer chunks is read back whole (no stale chunk).
    #[tokio::test]
    async fn snapshots_appear_whole_and_rewrites_never_mix() {
        let tables = Arc::new(ModelTables::default());
        let snap = |text: &str| Snapshot {
            doc: "s".into(),
            seq: 9,
            text: text.into(),
            clients: vec![],
            hash: None,
        };
        // Chunks without their index row: not a snapshot yet.
        tables.insert_chunk("s", 9, 0, b"{\"doc\"").await.unwrap();
        let s = ScyllaStore::on(tables.clone()).with_snapshot_chunk(1024);
        assert!(s.snapshot_at_or_before("s", 9).await.unwrap().is_none());
        let long = "x".repeat(10_000);
        s.put_snapshot(&snap(&long)).await.unwrap();
        assert_eq!(
            s.snapshot_at_or_before("s", 9).await.unwrap().unwrap().text,
            long
        );
        let s = ScyllaStore::on(tables.clone()).with_snapshot_chunk(64 << 10);
        s.put_snapshot(&snap("short")).await.unwrap();
        assert_eq!(
            s.snapshot_at_or_before("s", 9).await.unwrap().unwrap().text,
            "short"
        );
    }

    #[test]
    fn buckets_bound_a_partition() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(65_535), 0);
        assert_eq!(bucket_of(65_536), 1);
        // Seqs are unique offsets: a bucket spans 65,536 of them at most.
        assert_eq!(bucket_of((1 << 40) + 5), 1 << 24);
    }

    /// A document edited once in a while in a busy partition: its seqs are
    /// far apart. Reading after a seq touches only its records, and few
    /// bucket pages, however many empty buckets lie between.
    #[tokio::test]
    async fn sparse_history_is_read_without_a_scan() {
        let tables = Arc::new(ModelTables::default());
        let s = ScyllaStore::on(tables.clone());
        let seqs: Vec<u64> = (0..200u64).map(|i| 1 + i * 3_000_017).collect();
        let records: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let mut r = crate::conformance::record("sparse", q, "c", i as u64 + 1);
                r.prev = if i == 0 { 0 } else { seqs[i - 1] };
                r
            })
            .collect();
        s.put_history(&records).await.unwrap();
        // Another document's dense records share the buckets.
        let dense: Vec<_> = (1..=500)
            .map(|q| crate::conformance::record("dense", q, "c", q))
            .collect();
        s.put_history(&dense).await.unwrap();

        let after = seqs[150];
        tables.history_rows_read.store(0, Ordering::Relaxed);
        tables.bucket_reads.store(0, Ordering::Relaxed);
        let page = s.history("sparse", after, 10).await.unwrap();
        assert_eq!(
            page.iter().map(|r| r.seq).collect::<Vec<_>>(),
            seqs[151..161]
        );
        assert_eq!(
            tables.history_rows_read.load(Ordering::Relaxed),
            10,
            "read only what it returned"
        );
        assert_eq!(
            tables.bucket_reads.load(Ordering::Relaxed),
            1,
            "one page of buckets"
        );
        let all = s.history("sparse", 0, 1000).await.unwrap();
        assert_eq!(all.len(), 200);
        let before = s.history_before("sparse", seqs[100], 5).await.unwrap();
        assert_eq!(
            before.iter().map(|r| r.seq).collect::<Vec<_>>(),
            seqs[95..100]
        );
        assert_eq!(
            s.find_op("sparse", "c", 77).await.unwrap().map(|r| r.seq),
            Some(seqs[76])
        );
        assert_eq!(s.documents("", 10).await.unwrap(), ["dense", "sparse"]);
    }
}
