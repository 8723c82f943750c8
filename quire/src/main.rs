use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use document::WindowPolicy;
use protocol::Limits;
use quire::ServeConfig;
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc: in the same runs it took 6–20% less
/// CPU per keystroke at 2,000 and 8,000 keys/s (no difference measurable at
/// 600), with lower ack p50s there, for 5–10% more resident memory with
/// 10 kB documents and 4% less when typing (benches/README.md, issue 9's
/// seventh round). Its options are built in (`.cargo/config.toml`, so only
/// when cargo runs inside the repository; `cargo install` ignores it).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "quire",
    version,
    about = "Quire: a real-time collaborative plain-text editing backend"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every role (ingest, transformer, fanout, compactor) in one
    /// process: on the embedded log and store by default, or on a Kafka
    /// broker (--kafka) and PostgreSQL (--postgres).
    Serve(Box<ServeArgs>),
    /// Run ingest and fanout (the WebSocket and HTTP API) as their own
    /// process; needs --kafka and --postgres.
    Gateway(Box<ServeArgs>),
    /// Run the transformer as its own process (one of a consumer group);
    /// needs --kafka and --postgres.
    Transformer(Box<ServeArgs>),
    /// Run the compactor as its own process (one of a consumer group);
    /// needs --kafka and --postgres.
    Compactor(Box<ServeArgs>),
    /// Verify the applied records (prev chain, hash chain, replay against
    /// the stored snapshots and archive; with --raw the ops topic too).
    /// Prints one line per document; exits 1 on any violation.
    Audit(Box<AuditArgs>),
    /// Write one document's history (JSON lines: a header, then its applied
    /// records) to stdout or --out, for backups and moving documents.
    Export(Box<ExportArgs>),
    /// Submit an export's ops, in order, as a new document's ops (the
    /// transformer applies them; the target must be empty).
    Import(Box<ImportArgs>),
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long)]
    doc: String,
    /// The version to export (default: the latest).
    #[arg(long)]
    at: Option<u64>,
    /// File to write (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    backend: ServeArgs,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The export file (default: stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Import as this document id (default: the exported document's).
    #[arg(long)]
    doc: Option<String>,
    #[command(flatten)]
    backend: ServeArgs,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Only this document.
    #[arg(long)]
    doc: Option<String>,
    /// Verify records from this seq on (earlier ones only rebuild the state).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Read the records from the log's applied topic or the store's history.
    #[arg(long, value_enum, default_value = "log")]
    source: quire::audit::AuditSource,
    /// Also check the ops topic: every submitted op decided exactly once.
    #[arg(long)]
    raw: bool,
    /// JSON lines (one per document) instead of a summary.
    #[arg(long)]
    json: bool,
    /// The deployment: the same flags as `quire serve`.
    #[command(flatten)]
    backend: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "QUIRE_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Folder of the embedded log and store.
    #[arg(long, env = "QUIRE_DATA", default_value = "./quire-data")]
    data: PathBuf,
    /// HS256 secret for JWTs; without it the server runs open (loopback only).
    #[arg(long, env = "QUIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Allow running open (no secret) on a non-loopback address.
    #[arg(long, env = "QUIRE_INSECURE")]
    insecure: bool,
    /// Kafka-protocol brokers (`host:port[,host:port…]`) for the log
    /// instead of the embedded one. Missing topics are created.
    #[arg(long, env = "QUIRE_KAFKA")]
    kafka: Option<String>,
    /// Replication factor of the topics Quire creates on the broker.
    #[arg(long, env = "QUIRE_KAFKA_REPLICATION", default_value_t = 1)]
    kafka_replication: u32,
    /// The broker implements DeleteRecords (Apache Kafka, Redpanda): the
    /// compactor truncates the topics. Leave off for brokers without it
    /// (tansu): they keep every record.
    #[arg(long, env = "QUIRE_KAFKA_DELETE_RECORDS")]
    kafka_delete_records: bool,
    /// Milliseconds a dead transformer or compactor process keeps its
    /// partitions before the group hands them on.
    #[arg(long, env = "QUIRE_KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    kafka_session_timeout_ms: u64,
    /// Milliseconds the broker may hold a fetch that finds nothing
    /// (librdkafka's fetch.wait.max.ms). Kafka and Redpanda answer as soon
    /// as a record arrives: raise it there (e.g. 500) to save requests.
    /// Brokers that answer only when the wait is over (tansu) add it to
    /// every hop of an op, so the default is short.
    #[arg(long, env = "QUIRE_KAFKA_FETCH_WAIT_MS", default_value_t = 10)]
    kafka_fetch_wait_ms: u64,
    /// ScyllaDB (or Cassandra) nodes (`host:port[,host:port…]`) for history
    /// and snapshots instead of the embedded store. The keyspace and tables
    /// are created if absent; reads and writes are LOCAL_QUORUM.
    #[arg(long, env = "QUIRE_SCYLLA")]
    scylla: Option<String>,
    /// Keyspace of the ScyllaDB store.
    #[arg(long, env = "QUIRE_SCYLLA_KEYSPACE", default_value = "quire")]
    scylla_keyspace: String,
    /// Replication factor of the keyspace when Quire creates it
    /// (NetworkTopologyStrategy).
    #[arg(long, env = "QUIRE_SCYLLA_REPLICATION", default_value_t = 1)]
    scylla_replication: u32,
    /// PostgreSQL for history and snapshots instead of the embedded store:
    /// a `postgres://user@host:port/db` URL or `host=… port=… user=… dbname=…`.
    #[arg(long, env = "QUIRE_POSTGRES", hide_env_values = true)]
    postgres: Option<String>,
    /// Partitions of the ops and applied topics (fixed once created).
    #[arg(long, env = "QUIRE_PARTITIONS", default_value_t = 8)]
    partitions: u32,
    /// Prefix of the topic names.
    #[arg(long, env = "QUIRE_TOPIC_PREFIX", default_value = "quire.")]
    topic_prefix: String,
    /// Largest WebSocket frame or HTTP body, bytes.
    #[arg(long, env = "QUIRE_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// Largest insert of one op, bytes.
    #[arg(long, env = "QUIRE_MAX_INSERT_BYTES", default_value_t = 256 << 10)]
    max_insert_bytes: usize,
    /// Largest document, bytes.
    #[arg(long, env = "QUIRE_MAX_DOC_BYTES", default_value_t = 64 << 20)]
    max_doc_bytes: usize,
    /// Largest record produced or stored, bytes (like Kafka's message.max.bytes):
    /// an op whose applied record would be larger is refused with TOO_LARGE.
    #[arg(long, env = "QUIRE_MAX_RECORD_BYTES", default_value_t = 1 << 20)]
    max_record_bytes: usize,
    /// Ops per second per connection.
    #[arg(long, env = "QUIRE_OPS_PER_SEC", default_value_t = 200.0)]
    ops_per_sec: f64,
    /// Op burst per connection.
    #[arg(long, env = "QUIRE_OPS_BURST", default_value_t = 400.0)]
    ops_burst: f64,
    /// Presence updates per second per connection.
    #[arg(long, env = "QUIRE_PRESENCE_PER_SEC", default_value_t = 30.0)]
    presence_per_sec: f64,
    /// Outbound frames queued per subscriber before it is cut off (OVERLOADED).
    #[arg(long, env = "QUIRE_SUBSCRIBER_QUEUE", default_value_t = 1024)]
    subscriber_queue: usize,
    /// Open WebSocket connections at most.
    #[arg(long, env = "QUIRE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// HTTP op submissions waiting to be applied at most.
    #[arg(long, env = "QUIRE_MAX_PENDING_POSTS", default_value_t = 1024)]
    max_pending_posts: usize,
    /// Milliseconds an HTTP op submission waits to be applied (then 503).
    #[arg(long, env = "QUIRE_POST_TIMEOUT_MS", default_value_t = 30_000)]
    post_timeout_ms: u64,
    /// Ops a document keeps for transforming old bases (at least).
    #[arg(long, env = "QUIRE_WINDOW_OPS", default_value_t = 10_000)]
    window_ops: usize,
    /// Milliseconds of a document's history kept for transforming old bases (at least).
    #[arg(long, env = "QUIRE_WINDOW_MS", default_value_t = 600_000)]
    window_ms: i64,
    /// Ops a document keeps for transforming old bases (at most, whatever their age).
    #[arg(long, env = "QUIRE_WINDOW_MAX_OPS", default_value_t = 100_000)]
    window_max_ops: usize,
    /// Times a failing role is restarted in a row before the process exits non-zero.
    #[arg(long, env = "QUIRE_MAX_RESTARTS", default_value_t = 10)]
    max_restarts: u32,
    /// A document gets a snapshot every this many of its ops.
    #[arg(long, env = "QUIRE_SNAPSHOT_EVERY", default_value_t = 1000)]
    snapshot_every: u64,
    /// Documents the transformer and compactor keep in memory per partition.
    #[arg(long, env = "QUIRE_DOC_CACHE", default_value_t = 1024)]
    doc_cache: usize,
    /// Documents fanout keeps per partition beyond those with subscribers.
    #[arg(long, env = "QUIRE_IDLE_DOC_CACHE", default_value_t = 256)]
    idle_doc_cache: usize,
    /// Records each topic partition keeps after truncation (retention margin).
    #[arg(long, env = "QUIRE_RETAIN_RECORDS", default_value_t = 10_000)]
    retain_records: u64,
    /// Milliseconds between truncations.
    #[arg(long, env = "QUIRE_TRUNCATE_EVERY_MS", default_value_t = 5000)]
    truncate_every_ms: u64,
}

impl ServeArgs {
    fn into_config(self, roles: quire::Roles) -> anyhow::Result<ServeConfig> {
        let limits = Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_insert_bytes: self.max_insert_bytes,
            max_doc_bytes: self.max_doc_bytes,
            max_record_bytes: self.max_record_bytes,
            ops_per_sec: self.ops_per_sec,
            ops_burst: self.ops_burst,
            presence_per_sec: self.presence_per_sec,
            subscriber_queue: self.subscriber_queue,
            max_connections: self.max_connections,
            max_pending_posts: self.max_pending_posts,
            post_timeout_ms: self.post_timeout_ms,
        };
        let kafka = self
            .kafka
            .filter(|s| !s.is_empty())
            .map(|brokers| quire::KafkaSettings {
                brokers,
                replication: self.kafka_replication,
                delete_records: self.kafka_delete_records,
                session_timeout: Duration::from_millis(self.kafka_session_timeout_ms),
                fetch_wait: Duration::from_millis(self.kafka_fetch_wait_ms),
            });
        let config = ServeConfig {
            roles,
            kafka,
            addr: self.addr,
            data: self.data,
            jwt_secret: self.jwt_secret.filter(|s| !s.is_empty()),
            insecure: self.insecure,
            postgres: self.postgres.filter(|s| !s.is_empty()),
            scylla: self.scylla.filter(|s| !s.trim().is_empty()).map(|nodes| {
                quire::ScyllaSettings {
                    nodes,
                    keyspace: self.scylla_keyspace,
                    replication_factor: self.scylla_replication,
                }
            }),
            partitions: self.partitions,
            topic_prefix: self.topic_prefix,
            limits,
            window: WindowPolicy {
                min_ops: self.window_ops,
                min_age_ms: self.window_ms,
                max_ops: self.window_max_ops,
            },
            snapshot_every: self.snapshot_every,
            doc_cache: self.doc_cache,
            idle_doc_cache: self.idle_doc_cache,
            retain_records: self.retain_records,
            truncate_every: Duration::from_millis(self.truncate_every_ms),
            grace: Duration::from_secs(5),
            restarts: quire::RestartPolicy {
                max_restarts: self.max_restarts,
                ..Default::default()
            },
        };
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUIRE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve(args) => rt.block_on(serve(args.into_config(quire::Roles::ALL)?)),
        Cmd::Gateway(args) => rt.block_on(serve(args.into_config(quire::Roles::GATEWAY)?)),
        Cmd::Transformer(args) => rt.block_on(serve(args.into_config(quire::Roles::TRANSFORMER)?)),
        Cmd::Compactor(args) => rt.block_on(serve(args.into_config(quire::Roles::COMPACTOR)?)),
        Cmd::Export(args) => rt.block_on(export(*args)),
        Cmd::Import(args) => rt.block_on(import(*args)),
        Cmd::Audit(args) => {
            let ok = rt.block_on(audit(*args))?;
            std::process::exit(if ok { 0 } else { 1 });
        }
    }
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let config = args.backend.into_config(quire::Roles::ALL)?;
    let b = quire::audit::open_for_tool(&config).await?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let h = quire::transfer::export(
        b.log.as_ref(),
        b.store.as_ref(),
        &b.topics,
        &args.doc,
        args.at.unwrap_or(u64::MAX),
        &mut out,
    )
    .await?;
    eprintln!(
        "quire export: {}: {} records, version {}",
        h.doc, h.records, h.seq
    );
    Ok(())
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let config = args.backend.into_config(quire::Roles::ALL)?;
    let b = quire::audit::open_for_tool(&config).await?;
    let mut input: Box<dyn std::io::BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin().lock())),
    };
    let s = quire::transfer::import(
        b.log.as_ref(),
        b.store.as_ref(),
        &b.topics,
        &mut input,
        args.doc.as_deref(),
    )
    .await?;
    println!("{}", serde_json::to_string(&s)?);
    eprintln!(
        "quire import: {} ops submitted to {}; the transformer applies them (version {} once done)",
        s.ops, s.doc, s.last_seq
    );
    Ok(())
}

async fn audit(args: AuditArgs) -> anyhow::Result<bool> {
    let config = args.backend.into_config(quire::Roles::ALL)?;
    let backends = quire::audit::open_for_tool(&config).await?;
    let opts = quire::audit::AuditOptions {
        doc: args.doc,
        from: args.from,
        source: args.source,
        raw: args.raw,
        progress: !args.json,
    };
    let report = quire::audit::audit(
        backends.log.as_ref(),
        backends.store.as_ref(),
        &backends.topics,
        &opts,
    )
    .await?;
    let stdout = std::io::stdout();
    quire::audit::print_report(&report, args.json, &mut stdout.lock())?;
    if let Some((doc, v)) = report.first_violation() {
        eprintln!(
            "quire audit: first violation: {}{}: {}",
            doc.map(|d| format!("document {d}"))
                .unwrap_or_else(|| "the topic".into()),
            v.seq.map(|s| format!(", record {s}")).unwrap_or_default(),
            v.reason
        );
    }
    Ok(report.ok())
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Open storage before listening: a second server on the same data
    // folder fails here, before it claims to be up.
    let backends = quire::open_backends(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let local = listener.local_addr()?;
    if config.jwt_secret.is_none() {
        println!("quire: OPEN mode (no QUIRE_JWT_SECRET): every request acts as user 'anonymous'");
    }
    let log = match &config.kafka {
        Some(k) => format!("log on Kafka {}", k.brokers),
        None => format!("data in {}", config.data.display()),
    };
    println!(
        "quire listening on http://{local} ({}, {log})",
        config.roles.command()
    );
    std::io::stdout().flush()?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        s.cancel();
    });
    quire::run(config, backends, listener, shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
