use std::time::Duration;

use oplog::{partition_for, LogError, Offset, OpLog};
use protocol::{decode_out_record, AppliedRecord, OutRecord};
use store::{Store, StoreError};

use crate::{DocError, DocState, WindowEntry, WindowPolicy};

/// Consumer group of the transformer on the ops topic (default prefix).
pub const TRANSFORMER_GROUP: &str = "quire-transformer";
/// Consumer group of the compactor on the applied topic (default prefix).
/// Everything below its committed offset is in the store's history.
pub const COMPACTOR_GROUP: &str = "quire-compactor";

/// Topic and consumer-group names, with their configurable prefix (default
/// `quire.`): two deployments on one broker share neither.
#[derive(Debug, Clone)]
pub struct Topics {
    pub ops: String,
    pub applied: String,
    pub presence: String,
    /// The transformers' consumer group on `ops`.
    pub transformer_group: String,
    /// The compactors' consumer group on `applied`.
    pub compactor_group: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        // `quire.` gives `quire-transformer`, as before prefixes existed.
        let stem = prefix.strip_suffix('.').unwrap_or(prefix);
        Topics {
            ops: format!("{prefix}ops"),
            applied: format!("{prefix}applied"),
            presence: format!("{prefix}presence"),
            transformer_group: format!("{stem}-transformer"),
            compactor_group: format!("{stem}-compactor"),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::with_prefix("quire.")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("replay: {0}")]
    Replay(#[from] DocError),
    #[error("{doc}: truncation overtook the load (log starts at {log_start}, archived below {compacted})")]
    Overtaken {
        doc: String,
        compacted: Offset,
        log_start: Offset,
    },
    #[error("{doc}: applied record at offset {offset} is unreadable: {reason}")]
    BadRecord {
        doc: String,
        offset: Offset,
        reason: String,
    },
}

/// Where documents come from.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub log: &'a dyn OpLog,
    pub store: &'a dyn Store,
    pub topics: &'a Topics,
    pub window: WindowPolicy,
}

const PAGE: usize = 1000;

/// How often a load starts again when truncation overtook it.
const LOAD_ATTEMPTS: usize = 20;

/// Rebuilds `doc` from the latest snapshot (at or before `at`), the history
/// after it and the applied topic up to offset `upto` (exclusive; `None`: the
/// current end). With `at`, stops at the last version `<= at` (time travel,
/// no window). Without, the window is exactly what a warm copy of the
/// document would hold (see [`WindowPolicy`]).
pub async fn load<W: WindowEntry>(
    src: Sources<'_>,
    doc: &str,
    upto: Option<Offset>,
    at: Option<u64>,
) -> Result<DocState<W>, LoadError> {
    let mut attempts = 0;
    loop {
        match load_once(src, doc, upto, at).await {
            // The compactor archived and truncated under our feet: start
            // again, the records we missed are now in the store.
            Err(
                LoadError::Log(LogError::OffsetOutOfRange { .. }) | LoadError::Overtaken { .. },
            ) if attempts < LOAD_ATTEMPTS => {
                attempts += 1;
                tracing::debug!(doc, attempts, "load overtaken by truncation; again");
            }
            other => return other,
        }
    }
}

async fn load_once<W: WindowEntry>(
    src: Sources<'_>,
    doc: &str,
    upto: Option<Offset>,
    at: Option<u64>,
) -> Result<DocState<W>, LoadError> {
    let topic = src.topics.applied.as_str();
    let partition = partition_for(doc, src.log.partitions(topic)?);
    // Read the compactor's position before the store: history then covers
    // everything below it.
    let compacted = src
        .log
        .committed(&src.topics.compactor_group, topic, partition)
        .await?
        .unwrap_or(0);
    let limit = at.unwrap_or(u64::MAX);

    let mut state = match src.store.snapshot_at_or_before(doc, limit).await? {
        Some(s) => DocState::from_snapshot(&s),
        None => DocState::empty(doc),
    };
    'history: loop {
        let page = src.store.history(doc, state.version, PAGE).await?;
        let full = page.len() == PAGE;
        for r in page {
            if r.seq > limit {
                break 'history;
            }
            state.apply_record(&r)?;
        }
        if !full {
            break;
        }
    }

    // Everything below `compacted` was in the store when we read it. If the
    // log now starts above `compacted`, the compactor archived more and
    // truncated it away after our store reads: those records are in
    // neither what we read nor the topic.
    let log_start = src.log.log_start(topic, partition).await?;
    if log_start > compacted {
        return Err(LoadError::Overtaken {
            doc: doc.into(),
            compacted,
            log_start,
        });
    }
    let end = match upto {
        Some(u) => u,
        None => src.log.high_watermark(topic, partition).await?,
    };
    let mut pos = compacted;
    'topic: while pos < end {
        let batch = src
            .log
            .fetch(
                topic,
                partition,
                pos,
                PAGE.min((end - pos) as usize),
                Duration::ZERO,
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        for rec in batch {
            pos = rec.offset + 1;
            if rec.offset >= end {
                break 'topic;
            }
            if rec.key != doc {
                continue;
            }
            let out = decode_out_record(&rec.value).map_err(|e| LoadError::BadRecord {
                doc: doc.into(),
                offset: rec.offset,
                reason: e.to_string(),
            })?;
            if let OutRecord::Applied(a) = out {
                if a.seq > limit {
                    break 'topic;
                }
                if a.seq > state.version {
                    state.apply_record(&a)?;
                }
            }
        }
    }
    // Truncation may also have overtaken the scan itself (a consumer that
    // resets to the log start would skip records silently).
    let log_start = src.log.log_start(topic, partition).await?;
    if log_start > compacted {
        return Err(LoadError::Overtaken {
            doc: doc.into(),
            compacted,
            log_start,
        });
    }
    if at.is_some() {
        return Ok(state);
    }
    // The window reaches back before the snapshot: as far as a warm copy's
    // would (the history below the snapshot is complete, it was archived
    // before the snapshot was written).
    while state.wants_older(src.window) {
        let older = src.store.history_before(doc, state.floor + 1, PAGE).await?;
        if older.is_empty() {
            break;
        }
        let floor = state.floor;
        state.prepend_history(older);
        if state.floor == floor {
            break;
        }
    }
    state.trim(src.window);
    state.prune_clients();
    Ok(state)
}

/// Up to `limit` applied records of `doc` with `seq > after`, oldest first,
/// read the way [`load`] reads a document: the compactor's position first,
/// then the store's history (everything below that position), then the
/// applied topic from that position on; again when truncation passed the
/// position meanwhile. The topic scan covers only what the compactor has
/// not archived yet.
pub async fn records_after(
    src: Sources<'_>,
    doc: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<AppliedRecord>, LoadError> {
    let topic = src.topics.applied.as_str();
    let partition = partition_for(doc, src.log.partitions(topic)?);
    let mut compacted = 0;
    for _ in 0..LOAD_ATTEMPTS {
        compacted = src
            .log
            .committed(&src.topics.compactor_group, topic, partition)
            .await?
            .unwrap_or(0);
        let mut out: Vec<AppliedRecord> = Vec::new();
        while out.len() < limit {
            let tip = out.last().map_or(after, |r| r.seq);
            let page = src
                .store
                .history(doc, tip, PAGE.min(limit - out.len()))
                .await?;
            let full = page.len() == PAGE;
            out.extend(page);
            if !full {
                break;
            }
        }
        let end = src.log.high_watermark(topic, partition).await?;
        let mut pos = compacted.max(src.log.log_start(topic, partition).await?);
        let mut overtaken = false;
        'scan: while pos < end && out.len() < limit {
            let batch = match src
                .log
                .fetch(topic, partition, pos, PAGE, Duration::ZERO)
                .await
            {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(LogError::OffsetOutOfRange { .. }) => {
                    overtaken = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            for rec in batch {
                pos = rec.offset + 1;
                if rec.key != doc {
                    continue;
                }
                let a = match decode_out_record(&rec.value) {
                    Ok(OutRecord::Applied(a)) => a,
                    Ok(OutRecord::Rejected(_)) => continue,
                    Err(e) => {
                        return Err(LoadError::BadRecord {
                            doc: doc.into(),
                            offset: rec.offset,
                            reason: e.to_string(),
                        })
                    }
                };
                // Past the archive, and not an answer written twice.
                if a.seq > out.last().map_or(after, |r| r.seq) {
                    out.push(a);
                    if out.len() == limit {
                        break 'scan;
                    }
                }
            }
        }
        // Records between the position read above and the log's start now
        // were archived after the store was read: start again.
        let log_start = src.log.log_start(topic, partition).await?;
        if !overtaken && log_start <= compacted {
            return Ok(out);
        }
    }
    Err(LoadError::Overtaken {
        doc: doc.into(),
        compacted,
        log_start: src.log.log_start(topic, partition).await?,
    })
}
