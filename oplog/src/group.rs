//! Consumer groups: which partitions of a topic this process works on.
//!
//! A role that shares a topic with copies of itself in other processes (the
//! transformer on the ops topic, the compactor on the applied topic) joins
//! the topic's consumer group and works only on the partitions the group
//! assigns it. [`run_owned`] turns the group's events into one task per
//! owned partition: started on assignment, stopped (and waited for) before a
//! revocation is acknowledged, so a partition's new owner starts only after
//! the old one stopped — as far as the old owner is alive to hear it. A
//! paused owner that wakes up late (a "zombie") is the case readers of the
//! output handle themselves (ARCHITECTURE.md, "Overlapping owners").

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Partition;

/// A change of ownership.
#[derive(Debug)]
pub enum GroupEvent {
    /// These partitions are now ours.
    Assigned(Vec<Partition>),
    /// Stop working on these partitions; send on (or drop) `done` once
    /// stopped. The group waits for it before handing them on.
    Revoked {
        partitions: Vec<Partition>,
        done: oneshot::Sender<()>,
    },
}

/// Membership of one consumer group on one topic. Leaves the group when
/// dropped.
pub struct Membership {
    events: mpsc::Receiver<GroupEvent>,
    _leave: Box<dyn Send + Sync>,
}

impl Membership {
    /// A membership fed by `events`; `leave` is dropped when the membership
    /// is (a backend stops its group client there).
    pub fn new(events: mpsc::Receiver<GroupEvent>, leave: Box<dyn Send + Sync>) -> Membership {
        Membership {
            events,
            _leave: leave,
        }
    }

    /// The only member of its group: owns every partition, for good.
    pub fn sole(partitions: u32) -> Membership {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(GroupEvent::Assigned((0..partitions).collect()))
            .expect("room for one event");
        // Keeping the sender keeps the channel open: no more events.
        Membership::new(rx, Box::new(tx))
    }

    /// The next change; `None` when the group client is gone.
    pub async fn next(&mut self) -> Option<GroupEvent> {
        self.events.recv().await
    }
}

/// How long a revocation waits for a partition's task to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Runs `work(partition, stop)` for every partition the group assigns, until
/// `shutdown`. `joined` is set at the first assignment (for readiness). A revoked partition's task is cancelled and awaited before the
/// revocation is acknowledged. The first task to fail stops the others and
/// its error is returned (a task that returns `Ok` before it is told to stop
/// counts as finished, not failed).
pub async fn run_owned<F, Fut, E>(
    mut membership: Membership,
    joined: Option<&AtomicBool>,
    shutdown: &CancellationToken,
    mut work: F,
    lost: impl Fn() -> E,
) -> Result<(), E>
where
    F: FnMut(Partition, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let stop_all = shutdown.child_token();
    let mut tasks: JoinSet<(Partition, Result<(), E>)> = JoinSet::new();
    let mut owned: HashMap<Partition, CancellationToken> = HashMap::new();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            event = membership.next() => match event {
                None => break Err(lost()),
                Some(GroupEvent::Assigned(ps)) => {
                    if let Some(j) = joined {
                        j.store(true, Ordering::Relaxed);
                    }
                    for p in ps {
                        if owned.contains_key(&p) {
                            continue;
                        }
                        let stop = stop_all.child_token();
                        owned.insert(p, stop.clone());
                        let fut = work(p, stop);
                        tasks.spawn(async move { (p, fut.await) });
                    }
                }
                Some(GroupEvent::Revoked { partitions, done }) => {
                    let mut waiting: Vec<Partition> = Vec::new();
                    for p in &partitions {
                        if let Some(stop) = owned.remove(p) {
                            stop.cancel();
                            waiting.push(*p);
                        }
                    }
                    let mut failed = None;
                    let deadline = tokio::time::sleep(STOP_WAIT);
                    tokio::pin!(deadline);
                    while !waiting.is_empty() {
                        tokio::select! {
                            _ = &mut deadline => {
                                tracing::error!(?waiting, "partition tasks did not stop in time");
                                break;
                            }
                            Some(joined) = tasks.join_next() => match joined {
                                Ok((p, r)) => {
                                    waiting.retain(|w| *w != p);
                                    if let (Err(e), true) = (r, owned.contains_key(&p)) {
                                        failed.get_or_insert(e);
                                    }
                                }
                                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                                Err(_) => {}
                            },
                        }
                    }
                    let _ = done.send(());
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok((p, Ok(()))) => { owned.remove(&p); }
                Ok((_, Err(e))) => break Err(e),
                Err(e) if e.is_panic() => {
                    stop_all.cancel();
                    tasks.shutdown().await;
                    std::panic::resume_unwind(e.into_panic());
                }
                Err(_) => {}
            },
        }
    };
    stop_all.cancel();
    while tasks.join_next().await.is_some() {}
    outcome
}
