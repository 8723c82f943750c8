//! `quire serve`: every role in one process, wired only through the log.

pub mod audit;
mod feed;
pub mod transfer;

pub use feed::LocalFeed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use compactor::CompactorConfig;
use document::{Topics, WindowPolicy};
use fanout::{Fanout, FanoutConfig};
use ingest::{Auth, Gateway, Health, Ingest};
use kafkalog::{KafkaConfig, KafkaLog, KafkaMetrics};
use oplog::{EmbeddedLog, EmbeddedLogConfig, OpLog};
use prometheus::{IntCounterVec, Opts, Registry};
use protocol::Limits;
use store::{EmbeddedStore, PostgresStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use transformer::{CoreConfig, TransformerConfig};

/// Documents whose texts may wait at once in the text share between the
/// transformer and fanout, and their bytes (each offer is a rope clone,
/// sharing its chunks with the transformer's text while it keeps it).
const TEXT_SHARE_DOCS: usize = 16_384;
const TEXT_SHARE_BYTES: usize = 64 << 20;

/// The roles a process runs. `quire serve` runs them all; `quire gateway`,
/// `quire transformer` and `quire compactor` one each, sharing a broker
/// and a store with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Ingest and fanout: the WebSocket and HTTP API.
    pub gateway: bool,
    pub transformer: bool,
    pub compactor: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        gateway: true,
        transformer: true,
        compactor: true,
    };
    pub const GATEWAY: Roles = Roles {
        gateway: true,
        transformer: false,
        compactor: false,
    };
    pub const TRANSFORMER: Roles = Roles {
        gateway: false,
        transformer: true,
        compactor: false,
    };
    pub const COMPACTOR: Roles = Roles {
        gateway: false,
        transformer: false,
        compactor: true,
    };

    /// How the command line names this set.
    pub fn command(&self) -> &'static str {
        match *self {
            Roles::GATEWAY => "gateway",
            Roles::TRANSFORMER => "transformer",
            Roles::COMPACTOR => "compactor",
            _ => "serve",
        }
    }
}

/// The broker, when the log is Kafka's.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub replication: u32,
    /// The broker implements DeleteRecords (Apache Kafka, Redpanda): the
    /// compactor truncates. Off for brokers without it (tansu).
    pub delete_records: bool,
    pub session_timeout: Duration,
    /// How long the broker may hold a fetch that finds nothing.
    pub fetch_wait: Duration,
}

/// A validated configuration for `quire serve` and the role commands.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub roles: Roles,
    pub addr: SocketAddr,
    pub data: PathBuf,
    /// The log on a Kafka-protocol broker instead of the embedded one.
    pub kafka: Option<KafkaSettings>,
    pub jwt_secret: Option<String>,
    pub insecure: bool,
    /// PostgreSQL for history and snapshots instead of the embedded store.
    pub postgres: Option<String>,
    /// ScyllaDB (or Cassandra) for history and snapshots.
    pub scylla: Option<ScyllaSettings>,
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
    /// How a role that keeps failing is restarted, and when the process
    /// gives up on it.
    pub restarts: RestartPolicy,
}

/// Where the ScyllaDB store lives.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// `host:port[,host:port…]`
    pub nodes: String,
    pub keyspace: String,
    /// Of the keyspace, when Quire creates it (NetworkTopologyStrategy).
    pub replication_factor: u32,
}

/// Crash-only roles: a role whose loop fails is restarted after `backoff`
/// (doubling up to 30 s); after `max_restarts` failures in a row (a role
/// that ran for `healthy_after` counts as recovered) `/readyz` fails and
/// the process exits non-zero, for a supervisor to restart it.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub backoff: Duration,
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 10,
            backoff: Duration::from_millis(500),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl ServeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.roles != Roles::ALL {
            // The embedded log and store live in one process's folder: a
            // role on its own would write where no other role reads.
            let role = self.roles.command();
            if self.kafka.is_none() {
                bail!(
                    "`quire {role}` runs one role beside others, which must share its log: \
                     pass --kafka HOST:PORT (the embedded log under --data is this process's alone). \
                     To run every role in one process on the embedded log, use `quire serve`"
                );
            }
            if self.postgres.is_none() && self.scylla.is_none() {
                bail!(
                    "`quire {role}` runs one role beside others, which must share its store: \
                     pass --scylla HOST:PORT or --postgres URL (the embedded store under --data is this process's alone, \
                     and other processes would never see the snapshots and history it holds). \
                     To run every role in one process on the embedded store, use `quire serve`"
                );
            }
        }
        if self.postgres.is_some() && self.scylla.is_some() {
            bail!("--postgres and --scylla both name a store: give one");
        }
        if let Some(k) = &self.kafka {
            if k.brokers.trim().is_empty() {
                bail!("--kafka needs HOST:PORT[,HOST:PORT…]");
            }
            if k.replication == 0 {
                bail!("--kafka-replication must be at least 1");
            }
        }
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
        if self.doc_cache == 0 {
            bail!("--doc-cache must be at least 1");
        }
        if self.truncate_every.is_zero() {
            bail!("--truncate-every-ms must be at least 1");
        }
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            bail!("--topic-prefix must be non-empty and use only [A-Za-z0-9._-]");
        }
        self.limits.validate().map_err(anyhow::Error::msg)?;
        self.window.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// The log and store every role shares, and the metrics registry they
/// report to.
#[derive(Clone)]
pub struct Backends {
    pub log: Arc<dyn OpLog>,
    pub store: Arc<dyn Store>,
    pub topics: Topics,
    pub registry: Registry,
}

/// Opens the log (the broker with `config.kafka`, creating missing topics;
/// else the embedded log under `config.data`) and the store (PostgreSQL
/// with `config.postgres`, else the embedded store).
pub async fn open_backends(config: &ServeConfig) -> anyhow::Result<Backends> {
    open(config, config.roles.transformer).await
}

/// [`open_backends`] for a tool run (`audit`, `export`, `import`): no
/// transformer runs, so raw records on the embedded log are synced at once.
pub async fn open_backends_for_tool(config: &ServeConfig) -> anyhow::Result<Backends> {
    open(config, false).await
}

/// Opens the backends; `transformer`: the transformer runs in this process,
/// so on the embedded log it may read raw records before their sync.
async fn open(config: &ServeConfig, transformer: bool) -> anyhow::Result<Backends> {
    config.validate()?;
    let registry = Registry::new();
    let topics = Topics::with_prefix(&config.topic_prefix);
    let log: Arc<dyn OpLog> = match &config.kafka {
        Some(k) => {
            let mut c = KafkaConfig::new(&k.brokers);
            c.partitions = config.partitions;
            c.replication = k.replication;
            c.delete_records = k.delete_records;
            c.session_timeout = k.session_timeout;
            c.fetch_wait = k.fetch_wait;
            c.client_id = format!("quire-{}", config.roles.command());
            c.instance_id = Some(instance_id(&config.data)?);
            c.topics = vec![
                (topics.ops.clone(), true),
                (topics.applied.clone(), true),
                (topics.presence.clone(), false),
            ];
            let log = KafkaLog::connect(c, KafkaMetrics::new(&registry))
                .await
                .with_context(|| format!("connecting to the Kafka brokers {}", k.brokers))?;
            Arc::new(log)
        }
        None => Arc::new({
            let mut c = EmbeddedLogConfig::new(
                config.data.join("log"),
                vec![
                    (topics.ops.clone(), config.partitions),
                    (topics.applied.clone(), config.partitions),
                    (topics.presence.clone(), config.partitions),
                ],
            );
            // The transformer, in this process, is the raw topic's one
            // reader, and writes its answers back to this log: it may read a
            // raw record before its sync, and one sync covers both.
            if transformer {
                c.visible_before_sync = vec![topics.ops.clone()];
            }
            EmbeddedLog::open(c).with_context(|| {
                format!("opening the embedded log under {}", config.data.display())
            })?
        }),
    };
    // Snapshot rows stay under the record limit too.
    let chunk = store::SNAPSHOT_CHUNK.min(config.limits.max_record_bytes / 2);
    let store: Arc<dyn Store> = match (&config.postgres, &config.scylla) {
        (_, Some(s)) => Arc::new(
            store::ScyllaStore::connect(&s.nodes, &s.keyspace, s.replication_factor)
                .await
                .with_context(|| format!("connecting to ScyllaDB (--scylla {})", s.nodes))?
                .with_snapshot_chunk(chunk),
        ),
        (Some(url), None) => Arc::new(connect_postgres(url).await?.with_snapshot_chunk(chunk)),
        (None, None) => Arc::new(
            EmbeddedStore::open(&config.data.join("store"))
                .with_context(|| {
                    format!("opening the embedded store under {}", config.data.display())
                })?
                .with_snapshot_chunk(chunk),
        ),
    };
    Ok(Backends {
        log,
        store,
        topics,
        registry,
    })
}

/// This process's name in its consumer groups (Kafka static membership),
/// kept in `data/instance-id`: a process restarted on the same folder takes
/// its old place in the groups at once.
fn instance_id(data: &std::path::Path) -> anyhow::Result<String> {
    let path = data.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating the data folder {}", data.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!("quire-{:x}-{:x}", std::process::id(), nanos);
    let tmp = data.join("instance-id.tmp");
    std::fs::write(&tmp, &id)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Connects to PostgreSQL, retrying for about half a minute: a database
/// that restarts together with Quire is not a reason to fail.
async fn connect_postgres(url: &str) -> anyhow::Result<PostgresStore> {
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match PostgresStore::connect(url).await {
            Ok(s) => return Ok(s),
            Err(e) if attempt < 8 && !e.to_string().contains("bad PostgreSQL address") => {
                tracing::warn!(attempt, error = %e, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("connecting to PostgreSQL (--postgres)"))
            }
        }
    }
}

/// Runs the configured roles until `shutdown`, serving on `listener`: the
/// editors' API when the process is a gateway, else `/healthz`, `/readyz`
/// and `/metrics` only.
pub async fn run(
    config: ServeConfig,
    backends: Backends,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Backends {
        log,
        store,
        topics,
        registry,
    } = backends;
    let roles = config.roles;

    let mut names = Vec::new();
    if roles.transformer {
        names.push("transformer");
    }
    if roles.gateway {
        names.push("fanout");
    }
    if roles.compactor {
        names.push("compactor");
    }
    let health = Health::new(&names);
    let sup = Supervisor {
        policy: config.restarts,
        health: health.clone(),
        restarts: IntCounterVec::new(
            Opts::new(
                "quire_role_restarts_total",
                "Times a role's loop failed and was restarted, by role",
            ),
            &["role"],
        )?,
        failed: Arc::new(std::sync::Mutex::new(None)),
        shutdown: shutdown.clone(),
    };
    registry.register(Box::new(sup.restarts.clone()))?;
    let mut tasks = JoinSet::new();
    // The transformer and fanout in one process share each document's text
    // (document::TextShare): one copy where there were two.
    let text_share = (roles.transformer && roles.gateway)
        .then(|| Arc::new(document::TextShare::new(TEXT_SHARE_DOCS, TEXT_SHARE_BYTES)));
    if roles.transformer {
        let cfg = TransformerConfig {
            topics: topics.clone(),
            core: CoreConfig {
                window: config.window,
                max_doc_bytes: config.limits.max_doc_bytes,
                max_insert_bytes: config.limits.max_insert_bytes,
                max_record_bytes: config.limits.max_record_bytes,
            },
            max_docs: config.doc_cache,
            joined: Some(health.until_joined("transformer")),
            text_share: text_share.clone(),
            ..TransformerConfig::default()
        };
        let (log, store, m) = (
            log.clone(),
            store.clone(),
            transformer::Metrics::new(&registry),
        );
        tasks.spawn(supervise("transformer", sup.clone(), move |s| {
            transformer::run(cfg.clone(), log.clone(), store.clone(), m.clone(), s)
        }));
    }
    if roles.compactor {
        let cfg = CompactorConfig {
            topics: topics.clone(),
            window: config.window,
            snapshot_every: config.snapshot_every,
            retain_records: config.retain_records,
            truncate_every: config.truncate_every,
            max_docs: config.doc_cache,
            joined: Some(health.until_joined("compactor")),
            ..CompactorConfig::default()
        };
        let (log, store, m) = (
            log.clone(),
            store.clone(),
            compactor::Metrics::new(&registry),
        );
        tasks.spawn(supervise("compactor", sup.clone(), move |s| {
            compactor::run(cfg.clone(), log.clone(), store.clone(), m.clone(), s)
        }));
    }

    let lag = registry_lag(&registry)?;
    let mut fanout_handle = None;
    let app = if roles.gateway {
        let fanout = Fanout::new(
            FanoutConfig {
                topics: topics.clone(),
                window: config.window,
                subscriber_queue: config.limits.subscriber_queue,
                max_idle_docs: config.idle_doc_cache,
                text_share: text_share.clone(),
            },
            log.clone(),
            store.clone(),
            fanout::Metrics::new(&registry),
        )
        .await?;
        {
            let f = fanout.clone();
            tasks.spawn(supervise("fanout", sup.clone(), move |s| {
                let f = f.clone();
                async move { f.run(s).await }
            }));
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
        fanout_handle = Some(fanout.clone());
        let feed = Arc::new(LocalFeed(fanout));
        let gateway = Gateway::new(auth, ingest, feed, registry, health, shutdown.clone());
        ingest::router(gateway)
    } else {
        ops_router(registry, health, log.clone(), store.clone())
    };
    tasks.spawn(sample_lag(
        log.clone(),
        topics.clone(),
        roles,
        fanout_handle,
        lag,
        shutdown.clone(),
    ));
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
    let failed = sup.failed.lock().expect("not poisoned").take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn registry_lag(registry: &Registry) -> anyhow::Result<prometheus::IntGaugeVec> {
    let lag = prometheus::IntGaugeVec::new(
        Opts::new(
            "quire_consumer_lag",
            "Records between a consumer's position and the end of its partition, by consumer (transformer, compactor: their group's committed position; fanout: this process's)",
        ),
        &["consumer", "partition"],
    )?;
    registry.register(Box::new(lag.clone()))?;
    Ok(lag)
}

/// Every few seconds, each consumer of this process's roles: the end of
/// its partitions minus its position. Errors (a broker away) leave the
/// last values; `/readyz` reports the outage.
async fn sample_lag(
    log: Arc<dyn OpLog>,
    topics: Topics,
    roles: Roles,
    fanout: Option<Fanout>,
    lag: prometheus::IntGaugeVec,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut consumers: Vec<(&str, &str, Option<&str>)> = Vec::new();
        if roles.transformer {
            consumers.push(("transformer", &topics.ops, Some(&topics.transformer_group)));
        }
        if roles.compactor {
            consumers.push(("compactor", &topics.applied, Some(&topics.compactor_group)));
        }
        let fanout_pos = match &fanout {
            Some(f) => {
                consumers.push(("fanout", &topics.applied, None));
                f.positions().await
            }
            None => Vec::new(),
        };
        for (name, topic, group) in consumers {
            let Ok(n) = log.partitions(topic) else {
                continue;
            };
            for p in 0..n {
                let pos = match group {
                    Some(g) => log
                        .committed(g, topic, p)
                        .await
                        .ok()
                        .map(|c| c.unwrap_or(0)),
                    None => fanout_pos.get(p as usize).copied().flatten(),
                };
                let (Some(pos), Ok(end)) = (pos, log.high_watermark(topic, p).await) else {
                    continue;
                };
                lag.with_label_values(&[name, &p.to_string()])
                    .set(end.saturating_sub(pos) as i64);
            }
        }
    }
}

/// The HTTP surface of a process without the editors' API (a transformer
/// or compactor on its own): liveness, readiness (its roles are up, the log
/// and store answer) and metrics.
fn ops_router(
    registry: Registry,
    health: Health,
    log: Arc<dyn OpLog>,
    store: Arc<dyn Store>,
) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use prometheus::Encoder;
    let ready = move || {
        let (health, log, store) = (health.clone(), log.clone(), store.clone());
        async move {
            let down = health.down();
            if !down.is_empty() {
                let msg = format!("role down: {}\n", down.join(", "));
                return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
            }
            let probe = tokio::time::timeout(Duration::from_secs(3), async {
                log.ping().await.is_ok() && store.ping().await.is_ok()
            });
            if probe.await.unwrap_or(false) {
                (StatusCode::OK, "ready\n").into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log or store unavailable\n",
                )
                    .into_response()
            }
        }
    };
    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut buf = Vec::new();
            let enc = prometheus::TextEncoder::new();
            match enc.encode(&registry.gather(), &mut buf) {
                Ok(()) => {
                    ([(header::CONTENT_TYPE, enc.format_type().to_owned())], buf).into_response()
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
    };
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// What every role's supervisor shares.
#[derive(Clone)]
struct Supervisor {
    policy: RestartPolicy,
    health: Health,
    restarts: IntCounterVec,
    /// The role that could not be kept running, which ends the process.
    failed: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
    shutdown: CancellationToken,
}

/// Runs a role until shutdown, restarting it when its loop returns early
/// (an error, or an `Ok` before shutdown) or panics; gives up after too many
/// failures in a row: the role is marked down (`/readyz` fails) and the
/// process shuts down with an error.
async fn supervise<F, Fut, E>(role: &'static str, sup: Supervisor, mut start: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut failures = 0u32;
    let mut backoff = sup.policy.backoff;
    // The series exists from the start (0), so dashboards see every role.
    sup.restarts.with_label_values(&[role]);
    loop {
        let began = tokio::time::Instant::now();
        let run = tokio::spawn(start(sup.shutdown.child_token()));
        let outcome = match run.await {
            Ok(Ok(())) => "returned".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => format!("panicked: {e}"),
            Err(e) => e.to_string(),
        };
        if sup.shutdown.is_cancelled() {
            return;
        }
        if began.elapsed() >= sup.policy.healthy_after {
            failures = 0;
            backoff = sup.policy.backoff;
        }
        failures += 1;
        sup.restarts.with_label_values(&[role]).inc();
        if failures > sup.policy.max_restarts {
            tracing::error!(role, failures, error = %outcome, "role keeps failing; giving up and shutting down");
            sup.health.set(role, false);
            sup.failed
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| {
                    anyhow::anyhow!(
                        "the {role} role failed {failures} times in a row; last: {outcome}"
                    )
                });
            sup.shutdown.cancel();
            return;
        }
        tracing::error!(role, failures, error = %outcome, "role stopped; restarting");
        // Not ready while it is down.
        sup.health.set(role, false);
        tokio::select! {
            _ = sup.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        sup.health.set(role, true);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
