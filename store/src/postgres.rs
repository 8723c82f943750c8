//! [`PostgresStore`]: history and snapshots in PostgreSQL, a store that
//! every role process of a deployment can share.
//!
//! Schema (versioned migrations, applied at start-up under an advisory lock
//! so that several processes starting together apply each once):
//!
//! - `quire_history (doc, seq, client, cseq, record)`, primary key
//!   `(doc, seq)`, index `(doc, client, cseq)`: `record` is the applied
//!   record's JSON, byte for byte as on the topic;
//! - `quire_snapshot_chunks (doc, seq, chunk, data)`, primary key
//!   `(doc, seq, chunk)`: a snapshot's JSON in rows of bounded size,
//!   written in one transaction, so a reader sees all of a snapshot or none.
//!
//! Every statement is prepared once per pooled connection.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use protocol::{AppliedRecord, Snapshot};
use tokio_postgres::NoTls;

use crate::{storage, EmbeddedStore, Result, Store, StoreError, KEEP_SNAPSHOTS, SNAPSHOT_CHUNK};

/// Migrations, in order; `quire_migrations` records which have run.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE quire_history (
        doc text NOT NULL,
        seq bigint NOT NULL,
        client text NOT NULL,
        cseq bigint NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (doc, seq)
    );
    CREATE INDEX quire_history_op ON quire_history (doc, client, cseq);
    CREATE TABLE quire_snapshot_chunks (
        doc text NOT NULL,
        seq bigint NOT NULL,
        chunk integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (doc, seq, chunk)
    );",
)];

/// Advisory lock key that serialises migrations across processes.
const MIGRATION_LOCK: i64 = 0x0071_7569_7265; // "quire"

/// Connections in the pool.
const POOL_SIZE: usize = 8;

/// A seq or limit as PostgreSQL's signed `bigint`: seqs are log offsets,
/// far below 2^63; a larger bound means "all of them".
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A cseq as `bigint`, bit for bit: clients may use any u64, and lookups by
/// equality must not confuse two of them.
fn cseq_bits(cseq: u64) -> i64 {
    cseq as i64
}

/// How long a request waits for a connection, and a connection attempt.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Defaults for what the address does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// No statement may hold a role up for longer (milliseconds).
const STATEMENT_TIMEOUT_MS: u64 = 60_000;

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    chunk: usize,
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or `key=value` settings),
    /// and applies the migrations it lacks.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Storage(format!("bad PostgreSQL address: {e}")))?;
        // A server that stops answering must not hang a role or /readyz.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_options().is_none() {
            config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(storage)?;
        let store = PostgresStore {
            pool,
            chunk: SNAPSHOT_CHUNK,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Snapshot rows of at most `bytes` (at least 1 KiB).
    pub fn with_snapshot_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1024);
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(storage)
    }

    /// Applies the migrations the database lacks. A database already up to
    /// date is only read (a role that may not create tables still starts);
    /// one written by a newer Quire is refused.
    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let exists: Option<String> = c
            .query_one("SELECT to_regclass('quire_migrations')::text", &[])
            .await
            .map_err(storage)?
            .get(0);
        if exists.is_some() {
            let done: Option<i32> = c
                .query_one("SELECT max(version) FROM quire_migrations", &[])
                .await
                .map_err(storage)?
                .get(0);
            match done {
                Some(v) if v > latest => {
                    return Err(StoreError::Storage(format!(
                        "the database's schema is at version {v}, newer than this Quire knows ({latest}): run a newer Quire"
                    )))
                }
                Some(v) if v == latest => return Ok(()),
                _ => {}
            }
        }
        let tx = c.transaction().await.map_err(storage)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(storage)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS quire_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(storage)?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM quire_migrations", &[])
            .await
            .map_err(storage)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(storage)?;
            tx.execute(
                "INSERT INTO quire_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(storage)?;
            tracing::info!(version, "PostgreSQL store: migration applied");
        }
        tx.commit().await.map_err(storage)
    }

    fn decode_row(doc: &str, seq: i64, bytes: &[u8]) -> Result<AppliedRecord> {
        EmbeddedStore::decode(doc, seq as u64, bytes)
    }

    async fn records(
        &self,
        doc: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<AppliedRecord>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(storage)?;
        c.query(&stmt, params)
            .await
            .map_err(storage)?
            .iter()
            .map(|r| Self::decode_row(doc, r.get(0), r.get(1)))
            .collect()
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn put_history(&self, records: &[AppliedRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut docs = Vec::with_capacity(records.len());
        let mut seqs = Vec::with_capacity(records.len());
        let mut clients = Vec::with_capacity(records.len());
        let mut cseqs = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        for r in records {
            docs.push(r.doc.as_str());
            seqs.push(big(r.seq));
            clients.push(r.client.as_str());
            cseqs.push(cseq_bits(r.cseq));
            bodies.push(r.encode());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO quire_history (doc, seq, client, cseq, record)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bytea[])
                 ON CONFLICT (doc, seq) DO NOTHING",
            )
            .await
            .map_err(storage)?;
        c.execute(&stmt, &[&docs, &seqs, &clients, &cseqs, &bodies])
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>> {
        if after == u64::MAX {
            return Ok(Vec::new());
        }
        self.records(
            doc,
            "SELECT seq, record FROM quire_history WHERE doc = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&doc, &big(after), &big(limit as u64)],
        )
        .await
    }

    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>> {
        let mut out = self
            .records(
                doc,
                "SELECT seq, record FROM quire_history WHERE doc = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[&doc, &big(before), &big(limit as u64)],
            )
            .await?;
        out.reverse();
        Ok(out)
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(storage)?;
        let (doc, seq) = (snapshot.doc.as_str(), big(snapshot.seq));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(storage)?;
        // One writer of a document's snapshots at a time (two compactors
        // overlap during a rebalance): the rewrite stays idempotent and
        // the pruning exact.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&doc],
        )
        .await
        .map_err(storage)?;
        tx.execute(
            "DELETE FROM quire_snapshot_chunks WHERE doc = $1 AND seq = $2",
            &[&doc, &seq],
        )
        .await
        .map_err(storage)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO quire_snapshot_chunks (doc, seq, chunk, data) VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(storage)?;
        for (i, part) in bytes.chunks(self.chunk).enumerate() {
            tx.execute(&insert, &[&doc, &seq, &(i as i32), &part])
                .await
                .map_err(storage)?;
        }
        // The pruning rule (KEEP_SNAPSHOTS): older snapshots of the
        // document go; its history stays.
        tx.execute(
            "DELETE FROM quire_snapshot_chunks WHERE doc = $1 AND seq < (
                SELECT min(seq) FROM (
                    SELECT DISTINCT seq FROM quire_snapshot_chunks WHERE doc = $1
                    ORDER BY seq DESC LIMIT $2
                ) kept
            )",
            &[&doc, &(KEEP_SNAPSHOTS as i64)],
        )
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT seq, data FROM quire_snapshot_chunks
                 WHERE doc = $1 AND seq = (
                     SELECT max(seq) FROM quire_snapshot_chunks WHERE doc = $1 AND seq <= $2
                 )
                 ORDER BY chunk",
            )
            .await
            .map_err(storage)?;
        let rows = c.query(&stmt, &[&doc, &big(at)]).await.map_err(storage)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let seq: i64 = first.get(0);
        let mut bytes = Vec::new();
        for r in &rows {
            bytes.extend_from_slice(r.get::<_, &[u8]>(1));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                doc: doc.into(),
                seq: seq as u64,
                reason: e.to_string(),
            })
    }

    async fn find_op(&self, doc: &str, client: &str, cseq: u64) -> Result<Option<AppliedRecord>> {
        Ok(self
            .records(
                doc,
                "SELECT seq, record FROM quire_history WHERE doc = $1 AND client = $2 AND cseq = $3 ORDER BY seq",
                &[&doc, &client, &cseq_bits(cseq)],
            )
            .await?
            .into_iter()
            .find(|r| r.client == client && r.cseq == cseq))
    }

    async fn documents(&self, after: &str, limit: usize) -> Result<Vec<String>> {
        let c = self.client().await?;
        // A skip scan over the (doc, seq) key: one index probe a document.
        let rows = c
            .query(
                "WITH RECURSIVE d(doc, n) AS (
                     (SELECT doc, 1::bigint FROM quire_history WHERE doc > $1 ORDER BY doc LIMIT 1)
                     UNION ALL
                     SELECT (SELECT h.doc FROM quire_history h WHERE h.doc > d.doc ORDER BY h.doc LIMIT 1), n + 1
                     FROM d WHERE d.doc IS NOT NULL AND n < $2::bigint
                 )
                 SELECT doc FROM d WHERE doc IS NOT NULL",
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(storage)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn ping(&self) -> Result<()> {
        tokio::time::timeout(POOL_TIMEOUT, async {
            let c = self.client().await?;
            c.execute("SELECT 1", &[]).await.map_err(storage)?;
            Ok(())
        })
        .await
        .map_err(|_| StoreError::Storage("PostgreSQL did not answer in time".into()))?
    }
}
