//! Fetch by offset on a consumer API that streams.
//!
//! - [`Followers`]: the roles follow each partition with fetches that wait
//!   (one after another, each from where the last ended). Those go to one
//!   consumer per topic with every followed partition assigned, each
//!   partition's records split into a queue of its own: one fetch request
//!   to the broker covers all of a topic's partitions, instead of one
//!   long-polling consumer per partition (which kept a broker that answers
//!   a waiting fetch only when its wait is over busy while idle).
//! - [`Pool`]: every other fetch (one-off reads that do not wait, or a
//!   partition whose follower is busy) takes one of a bounded pool of
//!   assign-only consumers; a consumer left at `(topic, partition, n)` is
//!   handed the next fetch from `n` first, so the records librdkafka
//!   already prefetched are used, not fetched again; one left at a
//!   partition's end lets go of it, so it does not poll the broker idle.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oplog::{Offset, Partition, Record};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};

use crate::{KafkaConfig, KafkaMetrics};

/// Idle consumers kept for reuse.
const MAX_IDLE: usize = 64;
/// Once a fetch has records, how long it waits for more before returning
/// without having seen the partition's end.
const LINGER: Duration = Duration::from_millis(2);
/// A fetch with no wait still needs the broker's first answer; past this it
/// returns what it has.
const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// Consumer errors that say the broker is unreachable now, not that the
/// partition or the request is wrong.
fn transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::Resolve
    )
}

pub(crate) enum FetchError {
    /// Kafka's OFFSET_OUT_OF_RANGE: below the log start or past the end.
    OutOfRange,
    Kafka(KafkaError),
}

struct Reader {
    consumer: StreamConsumer,
    /// Where the consumer stands: the next record it will hand out.
    at: Option<(String, Partition, Offset)>,
    /// It stopped at the partition's end there: librdkafka reports an end
    /// once per offset, so the next fetch from there must not wait for
    /// another report.
    at_end: bool,
}

pub(crate) struct Pool {
    config: ClientConfig,
    settle: Duration,
    idle: Mutex<Vec<Reader>>,
    permits: Semaphore,
    metrics: KafkaMetrics,
}

/// An assign-only consumer's settings (`group.id` only names it: nothing
/// is committed through it).
fn consumer_config(config: &KafkaConfig, name: &str) -> ClientConfig {
    let mut c = config.base("reader");
    c.set("group.id", format!("{}-{name}", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        // No transactions: every produced record is visible.
        .set("isolation.level", "read_uncommitted")
        // Waiting fetches are answered when data comes or after this;
        // some brokers (tansu) do not answer early.
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait.as_millis().to_string(),
        )
        // Bounded prefetch per partition.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "1000");
    c
}

/// How long a consumer left at a partition's end waits for records in
/// flight before answering a fetch that does not wait.
fn settle(config: &KafkaConfig) -> Duration {
    config.fetch_wait * 3 + Duration::from_millis(20)
}

impl Pool {
    pub(crate) fn new(config: &KafkaConfig, metrics: KafkaMetrics) -> Pool {
        Pool {
            config: consumer_config(config, "readers"),
            settle: settle(config),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(config.max_readers.max(1)),
            metrics,
        }
    }

    fn take(&self, topic: &str, partition: Partition, from: Offset) -> Result<Reader, KafkaError> {
        let mut idle = self.idle.lock().unwrap();
        let exact = idle.iter().position(|r| {
            r.at.as_ref()
                .is_some_and(|(t, p, o)| t == topic && *p == partition && *o == from)
        });
        if let Some(i) = exact {
            return Ok(idle.swap_remove(i));
        }
        // Least recently returned first: most likely no one's next.
        if !idle.is_empty() {
            return Ok(idle.remove(0));
        }
        drop(idle);
        Ok(Reader {
            consumer: self.config.create()?,
            at: None,
            at_end: false,
        })
    }

    fn give_back(&self, mut reader: Reader) {
        // A reader left at a partition's end has nothing prefetched, and
        // would poll the broker for as long as it sits idle (a broker that
        // answers a waiting fetch only when its wait is over stays busy with
        // every such reader): it lets go of the partition. One left inside
        // the partition keeps what it prefetched for the next fetch from
        // where it stands.
        if reader.at_end {
            if reader.consumer.unassign().is_err() {
                return;
            }
            reader.at = None;
            reader.at_end = false;
        }
        let mut idle = self.idle.lock().unwrap();
        idle.push(reader);
        if idle.len() > MAX_IDLE {
            idle.remove(0);
        }
    }

    pub(crate) async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, FetchError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let mut reader = self
            .take(topic, partition, from)
            .map_err(FetchError::Kafka)?;
        let here = Some((topic.to_owned(), partition, from));
        if reader.at != here {
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(
                topic,
                partition as i32,
                rdkafka::Offset::Offset(from as i64),
            )
            .map_err(FetchError::Kafka)?;
            reader.consumer.assign(&tpl).map_err(FetchError::Kafka)?;
            reader.at = None;
            reader.at_end = false;
        }
        let read = read(
            &reader.consumer,
            Want {
                topic,
                partition,
                from,
                max,
                wait,
                settle: self.settle,
            },
            reader.at_end,
        )
        .await;
        match read.error {
            None => {
                reader.at = Some((topic.to_owned(), partition, read.next));
                reader.at_end = read.at_end;
                self.give_back(reader);
                Ok(read.records)
            }
            Some(e) => {
                // A failed consumer is not reused.
                self.metrics.fetch_errors.inc();
                if read.records.is_empty() {
                    Err(e)
                } else {
                    Ok(read.records)
                }
            }
        }
    }
}

/// Where a fetch's messages come from: a whole consumer (the pool's) or one
/// partition's queue split off a topic's consumer (a follower's).
trait Source {
    fn recv(&self) -> impl Future<Output = KafkaResult<BorrowedMessage<'_>>> + Send;
}

impl Source for StreamConsumer {
    fn recv(&self) -> impl Future<Output = KafkaResult<BorrowedMessage<'_>>> + Send {
        StreamConsumer::recv(self)
    }
}

impl Source for StreamPartitionQueue<DefaultConsumerContext> {
    fn recv(&self) -> impl Future<Output = KafkaResult<BorrowedMessage<'_>>> + Send {
        StreamPartitionQueue::recv(self)
    }
}

/// One fetch's request.
struct Want<'a> {
    topic: &'a str,
    partition: Partition,
    from: Offset,
    max: usize,
    wait: Duration,
    /// How long a source left at the partition's end waits for records in
    /// flight before answering a fetch that does not wait.
    settle: Duration,
}

/// What a fetch read, where its source now stands, and whether it failed
/// (with the records read before the failure).
struct Read {
    records: Vec<Record>,
    next: Offset,
    at_end: bool,
    error: Option<FetchError>,
}

/// Reads records `want.from..` of one partition from `source`, positioned
/// there, up to `want.max`, waiting up to `want.wait` for the first.
/// `at_end`: the source stopped at the partition's end there last time
/// (librdkafka reports an end once per offset).
async fn read<S: Source>(source: &S, want: Want<'_>, mut at_end: bool) -> Read {
    let Want {
        topic,
        partition,
        from,
        max,
        wait,
        settle,
    } = want;
    // A source left at the end has its records queued as they come: no
    // need to wait for the broker's first answer.
    let first_answer = if at_end { settle } else { FIRST_ANSWER };
    let began = Instant::now();
    let deadline = began + wait;
    let mut out: Vec<Record> = Vec::new();
    let mut next = from;
    let mut ended = false;
    let result = loop {
        if out.len() >= max.max(1) {
            break Ok(());
        }
        let now = Instant::now();
        let limit = if !out.is_empty() {
            LINGER
        } else if now < deadline {
            deadline - now
        } else if wait.is_zero() && now < began + first_answer {
            // No wait, but the broker has not answered yet.
            began + first_answer - now
        } else {
            break Ok(());
        };
        match timeout(limit, source.recv()).await {
            Err(_) => {
                if out.is_empty() && wait.is_zero() && !at_end {
                    tracing::warn!(topic, partition, from, "no answer from the broker");
                }
                ended = out.is_empty() && at_end;
                break Ok(());
            }
            Ok(Ok(m)) => {
                let offset = m.offset() as Offset;
                if m.topic() != topic || m.partition() as Partition != partition || offset < next {
                    continue; // left over from an earlier position
                }
                next = offset + 1;
                at_end = false;
                out.push(Record {
                    offset,
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: m.payload().unwrap_or_default().to_vec(),
                });
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => {
                at_end = true;
                if !out.is_empty() || wait.is_zero() || Instant::now() >= deadline {
                    ended = true;
                    break Ok(());
                }
                // At the end: wait on for the next record.
            }
            Ok(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ))) => break Err(FetchError::OutOfRange),
            Ok(Err(e @ KafkaError::MessageConsumption(code))) if transient(code) => {
                // The broker is away for a moment; librdkafka reconnects by
                // itself. Readiness reports the outage.
                tracing::debug!(topic, partition, error = %e, "fetch: broker unreachable for now");
                if !out.is_empty() {
                    break Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50).min(limit)).await;
            }
            Ok(Err(e)) => break Err(FetchError::Kafka(e)),
        }
    };
    Read {
        records: out,
        next,
        at_end: ended || (at_end && next == from),
        error: result.err(),
    }
}

/// One followed partition: its queue, and where it stands.
struct Follower {
    queue: StreamPartitionQueue<DefaultConsumerContext>,
    /// The next record it hands out; `None` after a failure (the next fetch
    /// seeks).
    at: Option<Offset>,
    at_end: bool,
}

/// One consumer of a topic and the partitions it follows (each at most
/// once: a consumer assigns a partition once).
struct Lane {
    consumer: Arc<StreamConsumer>,
    partitions: Mutex<HashMap<Partition, Arc<tokio::sync::Mutex<Follower>>>>,
    /// Serves the consumer's events (its main queue): librdkafka needs it
    /// polled even though every partition's records go to their own queue.
    events: tokio::task::JoinHandle<()>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// Lanes per topic at most: as many as there are readers following one
/// partition at different positions in one process (the fanout and the
/// compactor both follow the applied topic). Past that, the pool reads.
const MAX_LANES: usize = 4;

/// Fetches that follow a partition (they wait), on one consumer per topic
/// and reader: each role that follows a topic ends up in a lane of its own,
/// where each of its partitions stands where its last fetch ended.
pub(crate) struct Followers {
    config: ClientConfig,
    settle: Duration,
    topics: Mutex<HashMap<String, Vec<Arc<Lane>>>>,
    metrics: KafkaMetrics,
}

/// How a lane can serve a fetch from `from`.
enum Fit {
    /// Its follower of the partition stands at `from` and is free.
    Exact(tokio::sync::OwnedMutexGuard<Follower>),
    /// It does not follow the partition yet.
    Free(Arc<Lane>),
    /// Its follower is free but elsewhere: it would have to seek.
    Seek(Arc<Lane>, tokio::sync::OwnedMutexGuard<Follower>),
}

impl Followers {
    pub(crate) fn new(config: &KafkaConfig, metrics: KafkaMetrics) -> Followers {
        Followers {
            config: consumer_config(config, "followers"),
            settle: settle(config),
            topics: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lane(&self, topic: &str) -> KafkaResult<Arc<Lane>> {
        let consumer: Arc<StreamConsumer> = Arc::new(self.config.create()?);
        let c = consumer.clone();
        let name = topic.to_owned();
        let events = tokio::spawn(async move {
            loop {
                match c.recv().await {
                    Ok(m) => tracing::warn!(
                        topic = %name,
                        partition = m.partition(),
                        offset = m.offset(),
                        "a followed record reached the consumer's main queue; the next fetch reads it again"
                    ),
                    Err(e) => {
                        tracing::debug!(topic = %name, error = %e, "follower consumer event");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(Arc::new(Lane {
            consumer,
            partitions: Mutex::new(HashMap::new()),
            events,
        }))
    }

    /// The best lane for a fetch of `(topic, partition)` from `from`: one
    /// standing there, else one not following the partition yet (a new lane
    /// if there is room), else one that must seek; `None` when every
    /// follower of the partition is busy.
    fn fit(&self, topic: &str, partition: Partition, from: Offset) -> KafkaResult<Option<Fit>> {
        let mut topics = self.topics.lock().unwrap();
        let lanes = topics.entry(topic.to_owned()).or_default();
        let mut free = None;
        let mut seek = None;
        for lane in lanes.iter() {
            let follower = lane.partitions.lock().unwrap().get(&partition).cloned();
            match follower {
                None => {
                    if free.is_none() {
                        free = Some(lane.clone());
                    }
                }
                Some(f) => {
                    let Ok(g) = f.try_lock_owned() else { continue };
                    if g.at == Some(from) {
                        return Ok(Some(Fit::Exact(g)));
                    }
                    if seek.is_none() {
                        seek = Some((lane.clone(), g));
                    }
                }
            }
        }
        if let Some(lane) = free {
            return Ok(Some(Fit::Free(lane)));
        }
        if lanes.len() < MAX_LANES {
            let lane = self.lane(topic)?;
            lanes.push(lane.clone());
            return Ok(Some(Fit::Free(lane)));
        }
        Ok(seek.map(|(lane, g)| Fit::Seek(lane, g)))
    }

    /// Starts following `(topic, partition)` from `from` in `lane`.
    fn follow(
        lane: &Lane,
        topic: &str,
        partition: Partition,
        from: Offset,
    ) -> KafkaResult<tokio::sync::OwnedMutexGuard<Follower>> {
        // Split before assigning, so no record of it reaches the main queue.
        let queue = lane
            .consumer
            .split_partition_queue(topic, partition as i32)
            .ok_or_else(|| KafkaError::Subscription(format!("no partition {topic}/{partition}")))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            topic,
            partition as i32,
            rdkafka::Offset::Offset(from as i64),
        )?;
        lane.consumer.incremental_assign(&tpl)?;
        let f = Arc::new(tokio::sync::Mutex::new(Follower {
            queue,
            at: Some(from),
            at_end: false,
        }));
        let g = f.clone().try_lock_owned().expect("new");
        lane.partitions.lock().unwrap().insert(partition, f);
        Ok(g)
    }

    /// Fetches `from..` of a followed partition; `None` when no follower
    /// can take it (the pool then reads).
    pub(crate) async fn fetch(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Option<Result<Vec<Record>, FetchError>> {
        let fit = match self.fit(topic, partition, from) {
            Ok(fit) => fit?,
            Err(e) => return Some(Err(FetchError::Kafka(e))),
        };
        let mut f = match fit {
            Fit::Exact(g) => g,
            Fit::Free(lane) => match Self::follow(&lane, topic, partition, from) {
                Ok(g) => g,
                Err(e) => return Some(Err(FetchError::Kafka(e))),
            },
            Fit::Seek(lane, mut g) => {
                // Moved (a role restarted from its committed position, or
                // a failure): seek, without waiting for the broker.
                if let Err(e) = lane.consumer.seek(
                    topic,
                    partition as i32,
                    rdkafka::Offset::Offset(from as i64),
                    Duration::ZERO,
                ) {
                    tracing::debug!(topic, partition, from, error = %e, "follower could not seek; the pool reads");
                    return None;
                }
                g.at = Some(from);
                g.at_end = false;
                g
            }
        };
        let read = read(
            &f.queue,
            Want {
                topic,
                partition,
                from,
                max,
                wait,
                settle: self.settle,
            },
            f.at_end,
        )
        .await;
        match read.error {
            None => {
                f.at = Some(read.next);
                f.at_end = read.at_end;
                Some(Ok(read.records))
            }
            Some(e) => {
                self.metrics.fetch_errors.inc();
                f.at = None;
                f.at_end = false;
                if read.records.is_empty() {
                    Some(Err(e))
                } else {
                    Some(Ok(read.records))
                }
            }
        }
    }
}
