//! Joins (SPEC §5): snapshot or catch-up, then `ready`, then the live stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use document::{DocState, WindowOp};
use protocol::{AppliedRecord, ErrorCode, ServerMsg};
use ropey::Rope;
use tokio::sync::{mpsc, oneshot};

use crate::hub::{frame, Frame, Sub};
use crate::{Fanout, FanoutError};

/// A subscriber's view after `join`.
pub struct Joined {
    pub id: u64,
    /// Snapshot or catch-up, then `ready`; send these first.
    pub catchup: Vec<Frame>,
    /// Live frames after `ready`.
    pub rx: mpsc::Receiver<Frame>,
    /// Fires when the subscriber is cut off (with the code to send).
    pub kicked: oneshot::Receiver<ErrorCode>,
    pub version: u64,
}

/// Longest catch-up sent as applied ops; a client further behind gets a
/// snapshot (SPEC §5 allows either; its pending edits are merged). It also
/// bounds one catch-up's archive read (`archived.rs`).
pub const MAX_CATCHUP: usize = 10_000;

/// How many window ops follow version `since`.
fn version_gap_ops(state: &DocState, since: u64) -> usize {
    state.window.len() - state.window.partition_point(|r| r.seq <= since)
}

/// What a join sends, captured cheaply under the partition lock (a rope
/// clone shares the text) and turned into messages after it.
enum JoinPlan {
    CatchUp {
        doc: String,
        /// Window ops are cheap to clone; records are made after the lock.
        ops: Vec<WindowOp>,
        version: u64,
    },
    Snapshot {
        text: Rope,
        version: u64,
    },
}

impl JoinPlan {
    /// With a `since` the window still covers, the applied ops after it;
    /// otherwise a snapshot of the current state.
    fn capture(state: &DocState, since: Option<u64>) -> JoinPlan {
        let version = state.version;
        if let Some(s) = since.filter(|s| *s <= version) {
            // A catch-up longer than MAX_CATCHUP is a snapshot instead: it
            // is cloned under the partition lock, a snapshot is not.
            if let Some(ops) = state
                .ops_after(s)
                .filter(|_| version_gap_ops(state, s) <= MAX_CATCHUP)
            {
                return JoinPlan::CatchUp {
                    doc: state.doc.clone(),
                    ops: ops.cloned().collect(),
                    version,
                };
            }
        }
        JoinPlan::Snapshot {
            text: state.text.clone(),
            version,
        }
    }

    /// The messages, given the catch-up's records (`None`: the window
    /// ops' own, every one of which must have its text).
    fn messages(self, records: Option<Vec<AppliedRecord>>) -> Vec<ServerMsg> {
        match self {
            JoinPlan::CatchUp { doc, ops, version } => {
                let records = records.unwrap_or_else(|| {
                    ops.iter()
                        .map(|w| w.record(&doc).expect("a window op with its text"))
                        .collect()
                });
                records
                    .iter()
                    .map(ServerMsg::applied)
                    .chain([ServerMsg::Ready { seq: version }])
                    .collect()
            }
            JoinPlan::Snapshot { text, version } => vec![
                ServerMsg::Snapshot {
                    seq: version,
                    text: text.to_string(),
                },
                ServerMsg::Ready { seq: version },
            ],
        }
    }
}

/// What a join sends (SPEC §5): with a `since` the window still covers, the
/// applied ops after it; otherwise a snapshot of the current state; then
/// `ready`. Pure, so the simulation tests use exactly this. For a state
/// whose window ops all have their text (fanout drops archived ones' and
/// reads them back: `Fanout::join`).
pub fn join_messages(state: &DocState, since: Option<u64>) -> Vec<ServerMsg> {
    JoinPlan::capture(state, since).messages(None)
}

/// How long a join whose `since` is ahead of this gateway waits for it
/// (then the client gets a snapshot of what this gateway has).
const AHEAD_WAIT: Duration = Duration::from_secs(5);

impl Fanout {
    /// Subscribes a client: the catch-up is captured and the subscriber
    /// registered under the partition lock, so the live stream starts
    /// exactly after `ready`; the frames are built after the lock is gone.
    pub async fn join(
        &self,
        doc: &str,
        client: &str,
        since: Option<u64>,
    ) -> Result<Joined, FanoutError> {
        let queue = self.inner.config.subscriber_queue;
        let mut part = self.locked(doc).await?;
        // A client coming from another gateway may have seen more than
        // this one has consumed yet: wait (a little) for this gateway to
        // get there, so it catches the client up instead of sending it back
        // to an older version (which it would then see again).
        if let Some(since) = since {
            let deadline = tokio::time::Instant::now() + AHEAD_WAIT;
            while part
                .docs
                .peek_mut(doc)
                .is_some_and(|h| h.state.version < since)
                && tokio::time::Instant::now() < deadline
            {
                drop(part);
                tokio::time::sleep(Duration::from_millis(10)).await;
                part = self.locked(doc).await?;
            }
        }
        let hub = part.docs.get_mut(doc).expect("locked() loads it");
        let plan = JoinPlan::capture(&hub.state, since);
        let version = hub.state.version;
        let (tx, rx) = mpsc::channel(queue);
        let (kick, kicked) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        hub.subs.push(Sub {
            id,
            client: client.to_owned(),
            tx,
            kick: Some(kick),
        });
        drop(part);
        self.inner.metrics.subscribers.inc();
        // The records of ops whose text the window dropped come from the
        // archive; the live stream waits in the subscriber's queue.
        let records = match &plan {
            JoinPlan::CatchUp { doc, ops, .. } if ops.iter().any(|o| !o.has_text()) => {
                match self.records_of(doc, ops).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.leave(doc, id).await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        Ok(Joined {
            id,
            catchup: plan.messages(records).iter().map(frame).collect(),
            rx,
            kicked,
            version,
        })
    }

    /// Unsubscribes. (The gateway produces the `leave` to the presence topic.)
    pub async fn leave(&self, doc: &str, id: u64) {
        let mut part = self.inner.parts[self.partition(doc) as usize].lock().await;
        let Some(hub) = part.docs.peek_mut(doc) else {
            return;
        };
        if let Some(i) = hub.subs.iter().position(|s| s.id == id) {
            hub.subs.swap_remove(i);
            self.inner.metrics.subscribers.dec();
        }
    }
}
