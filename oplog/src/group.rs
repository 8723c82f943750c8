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
use tokio::task::{Id, JoinSet};
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
    let mut tasks: JoinSet<Result<(), E>> = JoinSet::new();
    // The task working on each owned partition. A task that outlived its
    // revocation is no longer here: whatever it returns is ignored.
    let mut owned: HashMap<Partition, (Id, CancellationToken)> = HashMap::new();
    let is_owned = |owned: &HashMap<Partition, (Id, CancellationToken)>, id: Id| {
        owned.values().any(|(i, _)| *i == id)
    };
    let outcome = loop {
        tokio::select! {
            // Shutdown first: the tasks stop with it, and what they return
            // then is not a failure.
            biased;
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
                        let id = tasks.spawn(work(p, stop.clone())).id();
                        owned.insert(p, (id, stop));
                    }
                }
                Some(GroupEvent::Revoked { partitions, done }) => {
                    let mut waiting: Vec<Id> = Vec::new();
                    for p in &partitions {
                        if let Some((id, stop)) = owned.remove(p) {
                            stop.cancel();
                            waiting.push(id);
                        }
                    }
                    let mut failed = None;
                    let deadline = tokio::time::sleep(STOP_WAIT);
                    tokio::pin!(deadline);
                    while !waiting.is_empty() {
                        tokio::select! {
                            _ = &mut deadline => {
                                tracing::error!(tasks = waiting.len(), "revoked partitions' tasks did not stop in time");
                                break;
                            }
                            Some(joined) = tasks.join_next_with_id() => match joined {
                                Ok((id, r)) => {
                                    waiting.retain(|w| *w != id);
                                    // A partition still owned failed meanwhile.
                                    if let (Err(e), true) = (r, is_owned(&owned, id)) {
                                        failed.get_or_insert(e);
                                    }
                                }
                                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                                Err(e) => waiting.retain(|w| *w != e.id()),
                            },
                        }
                    }
                    let _ = done.send(());
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
            },
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => match joined {
                Ok((id, r)) => {
                    if !is_owned(&owned, id) {
                        continue; // a revoked partition's task, finally done
                    }
                    owned.retain(|_, (i, _)| *i != id);
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
                Err(e) if e.is_panic() => {
                    stop_all.cancel();
                    tasks.shutdown().await;
                    std::panic::resume_unwind(e.into_panic());
                }
                Err(e) => owned.retain(|_, (i, _)| *i != e.id()),
            },
        }
    };
    stop_all.cancel();
    let drained = tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::error!("partition tasks did not stop in time; aborting them");
        tasks.shutdown().await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A membership driven by the test.
    fn membership() -> (mpsc::Sender<GroupEvent>, Membership) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Membership::new(rx, Box::new(())))
    }

    /// Each partition's task waits to be stopped, then fails: a revoked
    /// partition's failure is not the role's.
    #[tokio::test]
    async fn a_revoked_partitions_failure_is_not_the_roles() {
        let (tx, m) = membership();
        let shutdown = CancellationToken::new();
        let role = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                run_owned(
                    m,
                    None,
                    &shutdown,
                    |p, stop| async move {
                        stop.cancelled().await;
                        Err(format!("partition {p} stopped"))
                    },
                    || "lost".to_owned(),
                )
                .await
            }
        });
        tx.send(GroupEvent::Assigned(vec![0, 1])).await.unwrap();
        let (done, stopped) = oneshot::channel();
        tx.send(GroupEvent::Revoked {
            partitions: vec![0],
            done,
        })
        .await
        .unwrap();
        stopped.await.unwrap();
        // Partition 0 again: a new task, the old one's error is gone.
        tx.send(GroupEvent::Assigned(vec![0])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!role.is_finished(), "the role kept running");
        shutdown.cancel();
        assert_eq!(role.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn an_owned_partitions_failure_stops_the_role() {
        let (tx, m) = membership();
        let shutdown = CancellationToken::new();
        let role = tokio::spawn(async move {
            run_owned(
                m,
                None,
                &shutdown,
                |p, stop| async move {
                    if p == 1 {
                        Err("broken")
                    } else {
                        stop.cancelled().await;
                        Ok(())
                    }
                },
                || "lost",
            )
            .await
        });
        tx.send(GroupEvent::Assigned(vec![0, 1])).await.unwrap();
        assert_eq!(role.await.unwrap(), Err("broken"));
    }

    #[tokio::test]
    async fn a_lost_membership_stops_the_role() {
        let (tx, m) = membership();
        let shutdown = CancellationToken::new();
        let role = tokio::spawn(async move {
            run_owned(
                m,
                None,
                &shutdown,
                |_, stop| async move {
                    stop.cancelled().await;
                    Ok(())
                },
                || "lost",
            )
            .await
        });
        tx.send(GroupEvent::Assigned(vec![0])).await.unwrap();
        drop(tx);
        assert_eq!(role.await.unwrap(), Err("lost"));
    }
}
