//! A store seen through a hook: every call is shown to an [`Intercept`]
//! before it reaches the store, which may delay it or fail it. For fault
//! injection and for tests that check what a role asks of its store.

use std::sync::Arc;

use protocol::{AppliedRecord, Snapshot};

use crate::{Result, Store};

/// One call on the store, as the hook sees it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    PutHistory(&'a [AppliedRecord]),
    History {
        doc: &'a str,
        after: u64,
    },
    HistoryBefore {
        doc: &'a str,
        before: u64,
    },
    PutSnapshot(&'a Snapshot),
    SnapshotAtOrBefore {
        doc: &'a str,
        at: u64,
    },
    FindOp {
        doc: &'a str,
        client: &'a str,
        cseq: u64,
    },
    Documents {
        after: &'a str,
    },
    Ping,
}

/// Runs before each call; an error is the call's answer.
#[async_trait::async_trait]
pub trait Intercept: Send + Sync + 'static {
    async fn before(&self, call: Call<'_>) -> Result<()>;
}

/// `inner`, with every call shown to `hook` first.
pub struct Intercepted<I> {
    pub inner: Arc<dyn Store>,
    pub hook: I,
}

#[async_trait::async_trait]
impl<I: Intercept> Store for Intercepted<I> {
    async fn put_history(&self, records: &[AppliedRecord]) -> Result<()> {
        self.hook.before(Call::PutHistory(records)).await?;
        self.inner.put_history(records).await
    }

    async fn history(&self, doc: &str, after: u64, limit: usize) -> Result<Vec<AppliedRecord>> {
        self.hook.before(Call::History { doc, after }).await?;
        self.inner.history(doc, after, limit).await
    }

    async fn history_before(
        &self,
        doc: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>> {
        self.hook
            .before(Call::HistoryBefore { doc, before })
            .await?;
        self.inner.history_before(doc, before, limit).await
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        self.hook.before(Call::PutSnapshot(snapshot)).await?;
        self.inner.put_snapshot(snapshot).await
    }

    async fn snapshot_at_or_before(&self, doc: &str, at: u64) -> Result<Option<Snapshot>> {
        self.hook
            .before(Call::SnapshotAtOrBefore { doc, at })
            .await?;
        self.inner.snapshot_at_or_before(doc, at).await
    }

    async fn find_op(&self, doc: &str, client: &str, cseq: u64) -> Result<Option<AppliedRecord>> {
        self.hook.before(Call::FindOp { doc, client, cseq }).await?;
        self.inner.find_op(doc, client, cseq).await
    }

    async fn documents(&self, after: &str, limit: usize) -> Result<Vec<String>> {
        self.hook.before(Call::Documents { after }).await?;
        self.inner.documents(after, limit).await
    }

    async fn ping(&self) -> Result<()> {
        self.hook.before(Call::Ping).await?;
        self.inner.ping().await
    }
}
