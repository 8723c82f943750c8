use std::time::Duration;

use oplog::{partition_for, LogError, Offset, OpLog};
use protocol::{decode_out_record, OutRecord};
use store::{Store, StoreError};

use crate::{DocError, DocState, WindowPolicy};

/// Consumer group of the transformer on the ops topic.
pub const TRANSFORMER_GROUP: &str = "quire-transformer";
/// Consumer group of the compactor on the applied topic. Everything below its
/// committed offset is in the store's history.
pub const COMPACTOR_GROUP: &str = "quire-compactor";

/// Topic names, with their configurable prefix (default `quire.`).
#[derive(Debug, Clone)]
pub struct Topics {
    pub ops: String,
    pub applied: String,
    pub presence: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        Topics {
            ops: format!("{prefix}ops"),
            applied: format!("{prefix}applied"),
            presence: format!("{prefix}presence"),
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

/// Rebuilds `doc` from the latest snapshot (at or before `at`), the history
/// after it and the applied topic up to offset `upto` (exclusive; `None`: the
/// current end). With `at`, stops at the last version `<= at` (time travel).
pub async fn load(
    src: Sources<'_>,
    doc: &str,
    upto: Option<Offset>,
    at: Option<u64>,
) -> Result<DocState, LoadError> {
    let mut attempts = 0;
    loop {
        match load_once(src, doc, upto, at).await {
            // The compactor truncated under our feet: start again, the
            // records we missed are now in the store.
            Err(LoadError::Log(LogError::OffsetOutOfRange { .. })) if attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

async fn load_once(
    src: Sources<'_>,
    doc: &str,
    upto: Option<Offset>,
    at: Option<u64>,
) -> Result<DocState, LoadError> {
    let topic = src.topics.applied.as_str();
    let partition = partition_for(doc, src.log.partitions(topic)?);
    // Read the compactor's position before the store: history then covers
    // everything below it.
    let compacted = src
        .log
        .committed(COMPACTOR_GROUP, topic, partition)
        .await?
        .unwrap_or(0);
    let limit = at.unwrap_or(u64::MAX);

    let mut state = match src.store.snapshot_at_or_before(doc, limit).await? {
        Some(s) => DocState::from_snapshot(&s),
        None => DocState::empty(doc),
    };
    if at.is_none() && state.version > 0 {
        let older = src
            .store
            .history_before(doc, state.version + 1, src.window.min_ops)
            .await?;
        state.prepend_history(older);
    }
    let mut last_ts = i64::MIN;
    'history: loop {
        let page = src.store.history(doc, state.version, PAGE).await?;
        let full = page.len() == PAGE;
        for r in page {
            if r.seq > limit {
                break 'history;
            }
            last_ts = r.ts;
            state.apply_record(&r)?;
        }
        if !full {
            break;
        }
    }

    let start = src.log.log_start(topic, partition).await?.max(compacted);
    let end = match upto {
        Some(u) => u,
        None => src.log.high_watermark(topic, partition).await?,
    };
    let mut pos = start;
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
                    last_ts = a.ts;
                    state.apply_record(&a)?;
                }
            }
        }
    }
    if last_ts != i64::MIN {
        state.trim(src.window, last_ts);
    }
    Ok(state)
}
