//! A consumer-group member that only owns partitions: it never reads them
//! (they stay paused; the readers fetch), it hears rebalances and commits
//! the group's positions with its generation, so a member the group has
//! moved on from (a new generation it is not part of) cannot commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oplog::{GroupEvent, LogError, Partition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::{blocking, storage, KafkaConfig, KafkaMetrics};

pub(crate) struct Member {
    consumer: Arc<BaseConsumer<GroupContext>>,
}

pub(crate) struct GroupContext {
    group: String,
    /// Taken (closing the role's membership) when the member hits a fatal
    /// error: the role stops, and its supervisor joins again.
    events: std::sync::Mutex<Option<mpsc::Sender<GroupEvent>>>,
    metrics: KafkaMetrics,
}

impl GroupContext {
    /// Hands an event to the role; false when it is gone.
    fn send(&self, event: GroupEvent) -> bool {
        let tx = self.events.lock().unwrap().clone();
        tx.is_some_and(|tx| tx.blocking_send(event).is_ok())
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| e.partition() as Partition)
        .collect()
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical => {
                tracing::error!(group = self.group, fac, "{log_message}")
            }
            // librdkafka's errors are mostly transient (a broker away);
            // it retries them itself.
            L::Error | L::Warning => tracing::warn!(group = self.group, fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(group = self.group, fac, "{log_message}"),
            L::Debug => tracing::debug!(group = self.group, fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for GroupContext {
    // These run on the member's own thread (inside `poll`), so they may
    // block: a revocation is acknowledged only once the role stopped the
    // partitions' work.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps = partitions(tpl);
            tracing::info!(group = self.group, partitions = ?ps, "partitions revoked");
            self.metrics
                .rebalances
                .with_label_values(&[&self.group])
                .inc();
            let (done, stopped) = oneshot::channel();
            if self.send(GroupEvent::Revoked {
                partitions: ps,
                done,
            }) {
                let _ = stopped.blocking_recv();
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Owned, not read: the readers fetch.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(group = self.group, error = %e, "pausing assigned partitions");
                }
                let ps = partitions(tpl);
                tracing::info!(group = self.group, partitions = ?ps, "partitions assigned");
                self.send(GroupEvent::Assigned(ps));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(group = self.group, error = %e, "rebalance error");
            }
        }
    }
}

/// Stops the member's thread (which leaves the group) when dropped, then
/// runs `then`.
pub(crate) struct Leave {
    stop: Arc<AtomicBool>,
    then: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Leave {
    pub(crate) fn then(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Leave {
        self.then = Some(Box::new(f));
        self
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.then.take() {
            f();
        }
    }
}

impl Member {
    pub(crate) fn join(
        config: &KafkaConfig,
        group: &str,
        topic: &str,
        metrics: KafkaMetrics,
    ) -> Result<(Member, mpsc::Receiver<GroupEvent>, Leave), LogError> {
        let (tx, rx) = mpsc::channel(16);
        // The group's series exists from the join on (at 0).
        metrics.rebalances.with_label_values(&[group]);
        let context = GroupContext {
            group: group.to_owned(),
            events: std::sync::Mutex::new(Some(tx)),
            metrics,
        };
        let mut settings = config.base("member");
        if let Ok(d) = std::env::var("QUIRE_KAFKA_DEBUG") {
            settings.set("debug", d);
        }
        if let Some(id) = &config.instance_id {
            settings.set("group.instance.id", format!("{id}-{group}"));
        }
        let consumer: BaseConsumer<GroupContext> = settings
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout.as_millis() / 5)
                    .max(100)
                    .to_string(),
            )
            // Above the time a revocation may wait for the role's tasks
            // to stop (oplog's STOP_WAIT, 30 s): the member polls on its
            // own thread, so only a revocation can hold it up.
            .set("max.poll.interval.ms", "60000")
            .create_with_context(context)
            .map_err(storage)?;
        consumer.subscribe(&[topic]).map_err(storage)?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            let group = group.to_owned();
            std::thread::Builder::new()
                .name(format!("kafka-member-{group}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Paused partitions: only events and rebalances.
                        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                            tracing::warn!(group, error = %e, "group member");
                            if let Some((code, reason)) = consumer.client().fatal_error() {
                                // Fenced (another process took this one's
                                // place) or worse: the membership ends.
                                tracing::error!(group, %code, reason, "group member failed for good");
                                break;
                            }
                        }
                    }
                    consumer.context().events.lock().unwrap().take();
                    consumer.unsubscribe();
                    // Serve the revocation the unsubscribe causes.
                    for _ in 0..10 {
                        let _ = consumer.poll(Duration::from_millis(50));
                    }
                })
                .map_err(|e| LogError::Storage(format!("starting a group member: {e}")))?;
        }
        Ok((Member { consumer }, rx, Leave { stop, then: None }))
    }

    pub(crate) async fn commit(&self, tpl: TopicPartitionList) -> Result<(), LogError> {
        let c = self.consumer.clone();
        blocking(move || c.commit(&tpl, CommitMode::Sync).map_err(storage)).await
    }
}
