//! `quire serve`: every role in one process, wired only through the log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use compactor::CompactorConfig;
use document::{Topics, WindowPolicy};
use fanout::{Fanout, FanoutConfig};
use ingest::{Auth, Gateway, Ingest};
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};
use prometheus::Registry;
use protocol::Limits;
use store::{EmbeddedStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use transformer::{CoreConfig, TransformerConfig};

/// A validated configuration for `quire serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub jwt_secret: Option<String>,
    pub insecure: bool,
    pub partitions: u32,
    pub topic_prefix: String,
    pub limits: Limits,
    pub window: WindowPolicy,
    pub snapshot_every: u64,
    /// Documents the transformer and compactor cache per partition.
    pub doc_cache: usize,
    /// Documents fanout caches per partition beyond those in use.
    pub idle_doc_cache: usize,
    pub retain_records: u64,
    pub truncate_every: Duration,
    pub grace: Duration,
}

impl ServeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.jwt_secret.is_none() && !self.addr.ip().is_loopback() && !self.insecure {
            bail!(
                "refusing to listen on {} without QUIRE_JWT_SECRET: anyone could edit any document. \
                 Set a secret, or pass --insecure to run open on purpose",
                self.addr
            );
        }
        if self.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        Ok(())
    }
}

/// The log and store every role shares.
#[derive(Clone)]
pub struct Backends {
    pub log: Arc<dyn OpLog>,
    pub store: Arc<dyn Store>,
    pub topics: Topics,
}

/// Opens the embedded log and store under `config.data` (creating topics).
pub fn open_backends(config: &ServeConfig) -> anyhow::Result<Backends> {
    config.validate()?;
    let topics = Topics::with_prefix(&config.topic_prefix);
    let log: Arc<dyn OpLog> = Arc::new(
        EmbeddedLog::open(EmbeddedLogConfig {
            dir: config.data.join("log"),
            topics: vec![
                (topics.ops.clone(), config.partitions),
                (topics.applied.clone(), config.partitions),
                (topics.presence.clone(), config.partitions),
            ],
        })
        .with_context(|| format!("opening the embedded log under {}", config.data.display()))?,
    );
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&config.data.join("store")).with_context(|| {
            format!("opening the embedded store under {}", config.data.display())
        })?,
    );
    Ok(Backends { log, store, topics })
}

/// Runs every role until `shutdown`, serving on `listener`.
pub async fn run(
    config: ServeConfig,
    backends: Backends,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Backends { log, store, topics } = backends;
    let registry = Registry::new();

    let fanout = Fanout::new(
        FanoutConfig {
            topics: topics.clone(),
            window: config.window,
            subscriber_queue: config.limits.subscriber_queue,
            max_idle_docs: config.idle_doc_cache,
        },
        log.clone(),
        store.clone(),
        fanout::Metrics::new(&registry),
    )
    .await?;

    let mut tasks = JoinSet::new();
    {
        let cfg = TransformerConfig {
            topics: topics.clone(),
            core: CoreConfig {
                window: config.window,
                max_doc_bytes: config.limits.max_doc_bytes,
                max_insert_bytes: config.limits.max_insert_bytes,
            },
            max_docs: config.doc_cache,
            ..TransformerConfig::default()
        };
        let (log, store, m, s) = (
            log.clone(),
            store.clone(),
            transformer::Metrics::new(&registry),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = transformer::run(cfg, log, store, m, s).await {
                tracing::error!(error = %e, "transformer stopped");
            }
        });
    }
    {
        let (f, s) = (fanout.clone(), shutdown.clone());
        tasks.spawn(async move { f.run(s).await });
    }
    {
        let cfg = CompactorConfig {
            topics: topics.clone(),
            window: config.window,
            snapshot_every: config.snapshot_every,
            retain_records: config.retain_records,
            truncate_every: config.truncate_every,
            max_docs: config.doc_cache,
        };
        let (log, store, m, s) = (
            log.clone(),
            store.clone(),
            compactor::Metrics::new(&registry),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = compactor::run(cfg, log, store, m, s).await {
                tracing::error!(error = %e, "compactor stopped");
            }
        });
    }

    let auth = match &config.jwt_secret {
        Some(s) => Auth::hs256(s.as_bytes()),
        None => {
            tracing::warn!("no QUIRE_JWT_SECRET: running OPEN, every request is user 'anonymous' with write access");
            Auth::open()
        }
    };
    let ingest = Ingest::new(
        log.clone(),
        topics.ops.clone(),
        topics.presence.clone(),
        config.limits.clone(),
        ingest::Metrics::new(&registry),
    );
    let gateway = Gateway::new(auth, ingest, fanout, registry, shutdown.clone());
    let app = ingest::router(gateway);
    let s = shutdown.clone();
    // Small frames must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { s.cancelled().await })
        .await
        .context("serving HTTP")?;

    // One shutdown pattern: cancel, give the roles a grace period, then abort.
    shutdown.cancel();
    if tokio::time::timeout(config.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("roles did not stop within the grace period; aborting them");
        tasks.abort_all();
    }
    Ok(())
}
