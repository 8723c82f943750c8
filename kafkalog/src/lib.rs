//! Quire's log on a Kafka-protocol broker (Apache Kafka, Redpanda, tansu),
//! through librdkafka.
//!
//! - **Produce**: one idempotent producer (`enable.idempotence`,
//!   `acks=all`) keyed by document with Kafka's own partitioner
//!   (`murmur2_random`), so every client of the topic agrees on a
//!   document's partition. `produce` returns once the broker acknowledged.
//! - **Topics** are created through the admin API when missing, without
//!   time or size retention (the compactor decides what is deleted);
//!   partition counts come from metadata, refreshed in the background.
//! - **Fetch** by offset goes through a bounded pool of assign-only
//!   consumers ([`readers`]). A consumer that read a partition up to `n`
//!   is handed the next fetch at `n`, so a role's steady consumption is one
//!   consumer streaming; a cold document load takes any idle one and seeks.
//!   A fetch ends at librdkafka's partition EOF ("nothing more now"); the
//!   watermarks answer only the trait's own questions (end, log start).
//! - **Consumer groups**: [`OpLog::join`] is a real group member
//!   ([`group`]); its partitions stay paused (data flows through the
//!   readers) and commits of that group go through it, with its
//!   generation: a member the group has moved on from is refused.
//! - **Truncation** (DeleteRecords) is a capability taken from the
//!   configuration, never probed by sending it: some brokers advertise it
//!   and crash on it (tansu 0.6).

mod group;
mod metrics;
mod readers;
pub mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use oplog::{LogError, Membership, Offset, OpLog, Partition, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

pub use metrics::KafkaMetrics;

/// How a Quire process reaches its broker.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Partitions of topics this process creates (existing topics keep
    /// theirs).
    pub partitions: u32,
    /// Replication factor of topics this process creates.
    pub replication: u32,
    /// Whether the broker implements DeleteRecords. Off, the compactor
    /// archives and snapshots but never truncates.
    pub delete_records: bool,
    /// The topics Quire uses: `(name, retained)`. Created when missing
    /// (with `create_topics`): retained topics get no time or size
    /// retention; the others (presence) keep an hour.
    pub topics: Vec<(String, bool)>,
    /// Create missing topics through the admin API. Off where an operator
    /// (or a test cluster) creates them.
    pub create_topics: bool,
    /// `client.id` prefix, for the broker's logs.
    pub client_id: String,
    /// Consumer group session timeout: how long a dead member keeps its
    /// partitions.
    pub session_timeout: Duration,
    /// Concurrent fetches (each holds one consumer).
    pub max_readers: usize,
    /// librdkafka's `fetch.wait.max.ms`: how long the broker may hold a
    /// fetch that finds nothing. Kafka and Redpanda answer as soon as a
    /// record arrives, so a long wait costs nothing there; tansu answers
    /// only when the wait is over, so every hop of an op waits for it.
    pub fetch_wait: Duration,
    /// Kafka static membership (`group.instance.id`): a process restarted
    /// with the same id takes its old place in its groups at once, without
    /// waiting for the dead member's session to expire. Unique per process
    /// of a deployment; `None` for dynamic membership.
    pub instance_id: Option<String>,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, …) for
    /// every client.
    pub extra: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            partitions: 8,
            replication: 1,
            delete_records: false,
            topics: Vec::new(),
            create_topics: true,
            client_id: "quire".into(),
            session_timeout: Duration::from_secs(10),
            max_readers: 128,
            fetch_wait: Duration::from_millis(10),
            instance_id: None,
            extra: Vec::new(),
        }
    }

    /// Settings every client shares.
    fn base(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            // Quire's own timeouts decide; librdkafka's logs go to tracing.
            .set("socket.keepalive.enable", "true")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// Seconds a metadata or watermark request may take before it counts as
/// the broker being unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The log on a Kafka-protocol broker.
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    /// For topics that are not retained (presence, SPEC §1: `acks=1`):
    /// losing a cursor update to a broker crash is fine, waiting for every
    /// replica is not needed.
    ephemeral: FutureProducer,
    /// Watermarks, metadata and commits of groups this process is not a
    /// member of.
    meta: Arc<BaseConsumer>,
    readers: readers::Pool,
    /// Partition counts, from metadata.
    partitions: RwLock<HashMap<String, u32>>,
    /// Groups this process is a member of: their commits go through the
    /// member.
    members: Mutex<HashMap<String, Arc<group::Member>>>,
    /// Clients for groups this process only reads or commits positions of.
    group_clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    metrics: KafkaMetrics,
}

fn storage(e: KafkaError) -> LogError {
    LogError::Storage(format!("kafka: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Storage(format!("kafka client task: {e}")))?
}

impl KafkaLog {
    /// Connects, creates the configured topics that are missing and reads
    /// every topic's partition count. Fails when the broker cannot be
    /// reached within a few seconds.
    pub async fn connect(config: KafkaConfig, metrics: KafkaMetrics) -> Result<KafkaLog, LogError> {
        let producer: FutureProducer = config
            .base("producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(storage)?;
        let ephemeral: FutureProducer = config
            .base("producer-ephemeral")
            .set("acks", "1")
            .set("linger.ms", "1")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "5000")
            .create()
            .map_err(storage)?;
        let meta: BaseConsumer = config
            .base("meta")
            .set("group.id", format!("{}-meta", config.client_id))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(storage)?;
        let readers = readers::Pool::new(&config, metrics.clone());
        let inner = Arc::new(Inner {
            producer,
            ephemeral,
            meta: Arc::new(meta),
            readers,
            partitions: RwLock::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            group_clients: Mutex::new(HashMap::new()),
            metrics,
            config,
        });
        let log = KafkaLog { inner };
        log.create_topics().await?;
        log.refresh_partitions().await?;
        // Partition counts can grow under us (an operator adds
        // partitions): refresh them for as long as the log lives.
        let weak = Arc::downgrade(&log.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (KafkaLog { inner }).refresh_partitions().await {
                    tracing::warn!(error = %e, "refreshing partition counts");
                }
            }
        });
        Ok(log)
    }

    async fn create_topics(&self) -> Result<(), LogError> {
        let c = &self.inner.config;
        if c.topics.is_empty() || !c.create_topics {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = c.base("admin").create().map_err(storage)?;
        let topics: Vec<NewTopic<'_>> = c
            .topics
            .iter()
            .map(|(name, retained)| {
                let t = NewTopic::new(
                    name,
                    c.partitions as i32,
                    TopicReplication::Fixed(c.replication as i32),
                );
                if *retained {
                    t.set("retention.ms", "-1").set("retention.bytes", "-1")
                } else {
                    t.set("retention.ms", "3600000")
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = admin.create_topics(&topics, &opts).await.map_err(storage)?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Storage(format!("creating topic {name}: {code}")))
                }
            }
        }
        Ok(())
    }

    /// Reads the partition count of every configured topic from metadata,
    /// waiting (briefly) for topics just created to show up.
    pub async fn refresh_partitions(&self) -> Result<(), LogError> {
        let names: Vec<String> = self
            .inner
            .config
            .topics
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.inner.partitions.read().unwrap().keys().cloned())
            .collect();
        for name in names {
            let began = Instant::now();
            loop {
                let meta = self.inner.meta.clone();
                let topic = name.clone();
                let n = blocking(move || {
                    let md = meta
                        .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                        .map_err(storage)?;
                    Ok(md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len() as u32)
                        .unwrap_or(0))
                })
                .await?;
                if n > 0 {
                    let old = self
                        .inner
                        .partitions
                        .write()
                        .unwrap()
                        .insert(name.clone(), n);
                    if old.is_some_and(|o| o != n) {
                        tracing::warn!(topic = name, from = old, to = n, "partition count changed");
                    }
                    break;
                }
                if began.elapsed() > REQUEST_TIMEOUT {
                    return Err(LogError::UnknownTopic { topic: name });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// A client of `group` for reading and committing its positions.
    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut clients = self.inner.group_clients.lock().unwrap();
        if let Some(c) = clients.get(group) {
            return Ok(c.clone());
        }
        let c: BaseConsumer = self
            .inner
            .config
            .base("positions")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(storage)?;
        let c = Arc::new(c);
        clients.insert(group.to_owned(), c.clone());
        Ok(c)
    }

    fn known(&self, topic: &str, partition: Partition) -> Result<(), LogError> {
        let n = self.partitions(topic)?;
        if partition >= n {
            return Err(LogError::UnknownPartition {
                topic: topic.into(),
                partition,
            });
        }
        Ok(())
    }

    async fn watermarks(
        &self,
        topic: &str,
        partition: Partition,
    ) -> Result<(Offset, Offset), LogError> {
        self.known(topic, partition)?;
        let meta = self.inner.meta.clone();
        let topic = topic.to_owned();
        blocking(move || {
            let (lo, hi) = meta
                .fetch_watermarks(&topic, partition as i32, REQUEST_TIMEOUT)
                .map_err(storage)?;
            Ok((lo.max(0) as Offset, hi.max(0) as Offset))
        })
        .await
    }
}

fn one(topic: &str, partition: Partition, offset: Option<Offset>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    match offset {
        Some(o) => {
            tpl.add_partition_offset(topic, partition as i32, rdkafka::Offset::Offset(o as i64))
                .expect("a valid offset");
        }
        None => {
            tpl.add_partition(topic, partition as i32);
        }
    }
    tpl
}

#[async_trait::async_trait]
impl OpLog for KafkaLog {
    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.inner
            .partitions
            .read()
            .unwrap()
            .get(topic)
            .copied()
            .ok_or_else(|| LogError::UnknownTopic {
                topic: topic.into(),
            })
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(Partition, Offset)>, LogError> {
        self.partitions(topic)?;
        let began = Instant::now();
        let ephemeral = self
            .inner
            .config
            .topics
            .iter()
            .any(|(t, retained)| t == topic && !retained);
        let producer = if ephemeral {
            &self.inner.ephemeral
        } else {
            &self.inner.producer
        };
        let mut pending = Vec::with_capacity(records.len());
        for (key, value) in &records {
            let mut record = FutureRecord::to(topic).key(key.as_bytes()).payload(value);
            // Enqueue in order (the idempotent producer keeps a
            // partition's order); wait for room when the queue is full.
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(d) => break d,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        self.inner.metrics.delivery_errors.inc();
                        return Err(storage(e));
                    }
                }
            };
            pending.push(delivery);
        }
        let mut out = Vec::with_capacity(pending.len());
        for d in pending {
            match d.await {
                Ok(Ok(d)) if d.offset >= 0 => {
                    out.push((d.partition as Partition, d.offset as Offset))
                }
                Ok(Ok(d)) => {
                    // Delivered, at an offset the broker did not give: an
                    // idempotent retry of a batch it already had (after a
                    // broker restart) is answered so. Its offset must not
                    // pass for one (it was cast to u64::MAX, and `quire
                    // import` took the next base from it): an error, which
                    // callers answer by retrying with the same op id.
                    self.inner.metrics.delivery_errors.inc();
                    return Err(LogError::Storage(format!(
                        "kafka: a record of {topic} was delivered to partition {} but the broker gave no offset; retry it (the op id makes the retry harmless)",
                        d.partition
                    )));
                }
                Ok(Err((e, _))) => {
                    self.inner.metrics.delivery_errors.inc();
                    return Err(storage(e));
                }
                Err(_) => return Err(LogError::Closed),
            }
        }
        self.inner
            .metrics
            .produce_latency
            .observe(began.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        self.known(topic, partition)?;
        match self
            .inner
            .readers
            .fetch(topic, partition, from, max, wait)
            .await
        {
            Err(readers::FetchError::OutOfRange) => {
                let (lo, hi) = self.watermarks(topic, partition).await?;
                if from < lo {
                    Err(LogError::OffsetOutOfRange {
                        topic: topic.into(),
                        partition,
                        offset: from,
                        log_start: lo,
                    })
                } else {
                    // Beyond the end (`hi`, read after the fact): nothing yet.
                    let _ = hi;
                    tokio::time::sleep(wait).await;
                    Ok(Vec::new())
                }
            }
            Err(readers::FetchError::Kafka(e)) => Err(storage(e)),
            Ok(records) => Ok(records),
        }
    }

    async fn high_watermark(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        Ok(self.watermarks(topic, partition).await?.1)
    }

    async fn log_start(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        Ok(self.watermarks(topic, partition).await?.0)
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
        next: Offset,
    ) -> Result<(), LogError> {
        self.known(topic, partition)?;
        let tpl = one(topic, partition, Some(next));
        let member = self.inner.members.lock().unwrap().get(group).cloned();
        match member {
            Some(m) => m.commit(tpl).await,
            None => {
                let c = self.group_client(group)?;
                blocking(move || c.commit(&tpl, CommitMode::Sync).map_err(storage)).await
            }
        }
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        self.known(topic, partition)?;
        let c = self.group_client(group)?;
        let tpl = one(topic, partition, None);
        blocking(move || {
            let got = c.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(storage)?;
            Ok(got.elements().first().and_then(|e| match e.offset() {
                rdkafka::Offset::Offset(o) if o >= 0 => Some(o as Offset),
                _ => None,
            }))
        })
        .await
    }

    async fn delete_records(
        &self,
        topic: &str,
        partition: Partition,
        before: Offset,
    ) -> Result<Offset, LogError> {
        let (lo, hi) = self.watermarks(topic, partition).await?;
        if !self.inner.config.delete_records || before <= lo {
            return Ok(lo);
        }
        let admin: AdminClient<DefaultClientContext> =
            self.inner.config.base("admin").create().map_err(storage)?;
        let request = {
            // librdkafka's handles are not Send: only the future crosses
            // the await.
            let tpl = one(topic, partition, Some(before.min(hi)));
            let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
            admin.delete_records(&tpl, &opts)
        };
        let done = request.await.map_err(storage)?;
        let answer = done.elements().first().map(|e| (e.error(), e.offset()));
        match answer {
            Some((Ok(()), rdkafka::Offset::Offset(o))) => Ok(o.max(0) as Offset),
            Some((Err(e), _)) => Err(storage(e)),
            _ => Ok(self.watermarks(topic, partition).await?.0),
        }
    }

    fn can_truncate(&self) -> bool {
        self.inner.config.delete_records
    }

    async fn join(&self, group: &str, topic: &str) -> Result<Membership, LogError> {
        self.partitions(topic)?;
        let (member, events, leave) =
            group::Member::join(&self.inner.config, group, topic, self.inner.metrics.clone())?;
        let member = Arc::new(member);
        self.inner
            .members
            .lock()
            .unwrap()
            .insert(group.to_owned(), member.clone());
        // Leaving the group forgets the member here too.
        let inner = Arc::downgrade(&self.inner);
        let g = group.to_owned();
        let forget = move || {
            if let Some(inner) = inner.upgrade() {
                let mut members = inner.members.lock().unwrap();
                if members.get(&g).is_some_and(|m| Arc::ptr_eq(m, &member)) {
                    members.remove(&g);
                }
            }
        };
        Ok(Membership::new(events, Box::new(leave.then(forget))))
    }

    async fn ping(&self) -> Result<(), LogError> {
        // An idempotent producer that hit a fatal error fails every
        // produce from then on: not ready.
        for p in [&self.inner.producer, &self.inner.ephemeral] {
            if let Some((code, reason)) = p.client().fatal_error() {
                return Err(LogError::Storage(format!(
                    "kafka producer: {code}: {reason}"
                )));
            }
        }
        let meta = self.inner.meta.clone();
        blocking(move || {
            meta.fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
                .map_err(storage)
        })
        .await
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) == 1 {
            // Deliver what is queued before the process goes.
            let _ = self.inner.producer.flush(Duration::from_secs(5));
            let _ = self.inner.ephemeral.flush(Duration::from_secs(1));
        }
    }
}
