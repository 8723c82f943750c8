//! Fetch by offset on a consumer API that streams: a bounded pool of
//! assign-only consumers. Each fetch holds one consumer; a consumer left at
//! `(topic, partition, n)` is handed the next fetch from `n` first, so the
//! records librdkafka already prefetched are used, not fetched again.

use std::sync::Mutex;
use std::time::Duration;

use oplog::{Offset, Partition, Record};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
    /// How long a reader at the end waits for records in flight.
    settle: Duration,
    idle: Mutex<Vec<Reader>>,
    permits: Semaphore,
    metrics: KafkaMetrics,
}

impl Pool {
    pub(crate) fn new(config: &KafkaConfig, metrics: KafkaMetrics) -> Pool {
        let mut c = config.base("reader");
        c.set("group.id", format!("{}-readers", config.client_id))
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
            // Bounded prefetch per consumer.
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "1000");
        Pool {
            config: c,
            settle: config.fetch_wait * 3 + Duration::from_millis(20),
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

    fn give_back(&self, reader: Reader) {
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
        let first_answer = FIRST_ANSWER;
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
        // A reader left at the end has its records queued as they come:
        // no need to wait for the broker's first answer.
        let first_answer = if reader.at_end {
            self.settle
        } else {
            first_answer
        };
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
            match timeout(limit, reader.consumer.recv()).await {
                Err(_) => {
                    if out.is_empty() && wait.is_zero() && !reader.at_end {
                        tracing::warn!(topic, partition, from, "no answer from the broker");
                    }
                    ended = out.is_empty() && reader.at_end;
                    break Ok(());
                }
                Ok(Ok(m)) => {
                    let offset = m.offset() as Offset;
                    if m.topic() != topic
                        || m.partition() as Partition != partition
                        || offset < next
                    {
                        continue; // left over from an earlier assignment
                    }
                    next = offset + 1;
                    reader.at_end = false;
                    out.push(Record {
                        offset,
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Ok(Err(KafkaError::PartitionEOF(_))) => {
                    reader.at_end = true;
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
                    // The broker is away for a moment; librdkafka
                    // reconnects by itself. Readiness reports the outage.
                    tracing::debug!(topic, partition, error = %e, "fetch: broker unreachable for now");
                    if !out.is_empty() {
                        break Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50).min(limit)).await;
                }
                Ok(Err(e)) => break Err(FetchError::Kafka(e)),
            }
        };
        match result {
            Ok(()) => {
                reader.at = Some((topic.to_owned(), partition, next));
                reader.at_end = ended || (reader.at_end && out.is_empty());
                self.give_back(reader);
                Ok(out)
            }
            Err(e) => {
                // A failed consumer is not reused.
                self.metrics.fetch_errors.inc();
                if out.is_empty() {
                    Err(e)
                } else {
                    Ok(out)
                }
            }
        }
    }
}
