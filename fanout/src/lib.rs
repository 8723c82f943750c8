//! The fanout role (SPEC §1, §5): consumes `quire.applied`, keeps the
//! subscribers of each document, delivers every applied op to each of them
//! exactly once and in `seq` order, routes rejections to the submitter only,
//! serves joins (snapshot or catch-up, then `ready`), reads and history,
//! answers the gateway's duplicate checks, and relays presence.
//!
//! Per partition, one lock guards the consumer position and the documents
//! in memory ([`hub`]): a join reads the document and registers its
//! subscriber under that lock, so the live stream continues exactly where
//! the catch-up ended. **No store or log I/O happens under that lock**: a
//! cold document is loaded outside it while the consumer buffers the
//! document's records, and archive lookups run after it is released. So
//! one client's expensive request never holds up delivery to the others.
//!
//! - [`hub`]: a document's subscribers and waiters, a partition's state, and
//!   loading a document without holding the lock;
//! - [`archived`]: dropping the window's large texts once archived, and
//!   reading them back;
//! - [`consume`]: the applied-topic consumer;
//! - [`join`]: joins and leaves;
//! - [`submit`]: the duplicate checks and outcome waiters for ingest;
//! - [`reads`]: current text, time travel and history;
//! - [`presence`]: the presence relay.

mod archived;
mod consume;
mod hub;
mod join;
mod metrics;
mod presence;
mod reads;
mod submit;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use document::{LoadError, Sources, TextShare, Topics, WindowPolicy};
use oplog::{partition_for, LogError, OpLog, Partition};
use protocol::{ErrorCode, ProtoError};
use store::{Store, StoreError};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use hub::Frame;
pub use join::{join_messages, Joined};
pub use metrics::Metrics;
pub use submit::{check, resolve, Ask, Checked, Found, Waited};

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub topics: Topics,
    pub window: WindowPolicy,
    /// Outbound frames queued per subscriber; overflow cuts it off with
    /// `OVERLOADED` (it re-joins with `since` and misses nothing).
    pub subscriber_queue: usize,
    /// Documents kept in memory per partition; those with subscribers or
    /// waiters are never evicted, so this bounds the idle ones.
    pub max_idle_docs: usize,
    /// The texts a transformer in this process offers
    /// ([`document::TextShare`]); `None` when it runs elsewhere.
    pub text_share: Option<Arc<TextShare>>,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            topics: Topics::default(),
            window: WindowPolicy::default(),
            subscriber_queue: protocol::Limits::default().subscriber_queue,
            max_idle_docs: 256,
            text_share: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("loading a document: {0}")]
    Load(#[from] LoadError),
    #[error(transparent)]
    Refused(#[from] ProtoError),
    #[error("{doc}: could not load it while its partition moved on; retry")]
    Busy { doc: String },
    #[error("a partition task panicked: {0}")]
    Panicked(String),
    #[error("{doc}@{seq}: the window dropped the op's text as archived, and the archive lacks it")]
    NotArchived { doc: String, seq: u64 },
}

impl FanoutError {
    /// What a client is told: refusals as they are, anything else is the
    /// backend's trouble (OVERLOADED, retry later).
    pub fn to_proto(&self) -> ProtoError {
        match self {
            FanoutError::Refused(p) => p.clone(),
            other => {
                tracing::error!(error = %other, "backend error");
                ProtoError::new(
                    ErrorCode::Overloaded,
                    format!("backend unavailable: {other}"),
                )
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: FanoutConfig,
    pub(crate) log: Arc<dyn OpLog>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) parts: Vec<Mutex<hub::Part>>,
    /// Wakes a partition's consumers when it stops being idle.
    pub(crate) wake: Vec<tokio::sync::Notify>,
    pub(crate) metrics: Metrics,
    pub(crate) next_id: AtomicU64,
}

/// The fanout role. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    pub(crate) inner: Arc<Inner>,
}

impl Fanout {
    /// Builds the fanout, starting each partition at the current end of the
    /// applied topic (older state is loaded from store and log on demand).
    pub async fn new(
        config: FanoutConfig,
        log: Arc<dyn OpLog>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Result<Fanout, FanoutError> {
        let n = log.partitions(&config.topics.applied)?;
        let mut parts = Vec::with_capacity(n as usize);
        for p in 0..n {
            let pos = log.high_watermark(&config.topics.applied, p).await?;
            parts.push(Mutex::new(hub::Part::new(pos, config.max_idle_docs)));
        }
        Ok(Fanout {
            inner: Arc::new(Inner {
                config,
                log,
                store,
                wake: (0..n).map(|_| tokio::sync::Notify::new()).collect(),
                parts,
                metrics,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    pub(crate) fn partition(&self, doc: &str) -> Partition {
        partition_for(doc, self.inner.parts.len() as u32)
    }

    pub(crate) fn sources(&self) -> Sources<'_> {
        Sources {
            log: self.inner.log.as_ref(),
            store: self.inner.store.as_ref(),
            topics: &self.inner.config.topics,
            window: self.inner.config.window,
        }
    }

    /// Consumes the applied and presence topics until `shutdown`, one task
    /// per partition and topic. The first to fail stops the others and the
    /// role returns its error (its supervisor restarts it from each
    /// partition's position).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), FanoutError> {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        for p in 0..self.inner.parts.len() as Partition {
            for presence in [false, true] {
                let (me, stop) = (self.clone(), stop.clone());
                let topic = if presence { "presence" } else { "applied" };
                let span = tracing::info_span!("fanout", partition = p, topic);
                let task = async move {
                    if presence {
                        me.relay_presence(p, &stop).await
                    } else {
                        me.consume(p, &stop).await
                    }
                };
                tasks.spawn(task.instrument(span));
            }
        }
        while let Some(done) = tasks.join_next().await {
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) => FanoutError::Panicked(e.to_string()),
            };
            stop.cancel();
            tasks.shutdown().await;
            return Err(failed);
        }
        Ok(())
    }

    /// The next applied offset each partition's consumer will read; `None`
    /// for a partition this gateway does not follow now (idle).
    pub async fn positions(&self) -> Vec<Option<oplog::Offset>> {
        let mut out = Vec::with_capacity(self.inner.parts.len());
        for p in &self.inner.parts {
            let part = p.lock().await;
            out.push((!part.idle()).then_some(part.pos));
        }
        out
    }

    /// Waits while partition `p` is idle (no document of it in memory or
    /// being loaded). Returns false on shutdown.
    pub(crate) async fn while_idle(&self, p: Partition, shutdown: &CancellationToken) -> bool {
        loop {
            let woken = self.inner.wake[p as usize].notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.inner.parts[p as usize].lock().await.idle() {
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = woken => {}
                // Documents also leave by eviction: look again now and then.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Whether log and store answer.
    pub async fn ready(&self) -> bool {
        self.inner.log.ping().await.is_ok() && self.inner.store.ping().await.is_ok()
    }
}
