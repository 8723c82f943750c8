//! Fanout behind the gateway's [`ingest::Feed`] interface, in one process.

use fanout::{Fanout, FanoutError, Joined};
use ingest::{Feed, Subscription, Waited};
use protocol::{AppliedRecord, ProtoError};

/// The in-process fanout as the gateway's feed.
pub struct LocalFeed(pub Fanout);

fn told(e: FanoutError) -> ProtoError {
    e.to_proto()
}

#[async_trait::async_trait]
impl Feed for LocalFeed {
    async fn join(
        &self,
        doc: &str,
        client: &str,
        since: Option<u64>,
    ) -> Result<Subscription, ProtoError> {
        let Joined {
            id,
            catchup,
            rx,
            kicked,
            ..
        } = self.0.join(doc, client, since).await.map_err(told)?;
        Ok(Subscription {
            id,
            catchup,
            rx,
            kicked,
        })
    }

    async fn leave(&self, doc: &str, id: u64) {
        self.0.leave(doc, id).await
    }

    async fn check_op(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Option<u64>, ProtoError> {
        self.0
            .check_op(doc, client, cseq, base, user)
            .await
            .map_err(told)
    }

    async fn wait_for(
        &self,
        doc: &str,
        client: &str,
        cseq: u64,
        base: u64,
        user: &str,
    ) -> Result<Waited, ProtoError> {
        Ok(
            match self
                .0
                .wait_for(doc, client, cseq, base, user)
                .await
                .map_err(told)?
            {
                fanout::Waited::AlreadyApplied(r) => Waited::AlreadyApplied(r),
                fanout::Waited::Pending(rx) => Waited::Pending(rx),
            },
        )
    }

    async fn forget_waiter(&self, doc: &str, client: &str, cseq: u64) {
        self.0.forget_waiter(doc, client, cseq).await
    }

    async fn read(&self, doc: &str, at: Option<u64>) -> Result<(u64, String), ProtoError> {
        self.0.read(doc, at).await.map_err(told)
    }

    async fn history(
        &self,
        doc: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AppliedRecord>, ProtoError> {
        self.0.history(doc, after, limit).await.map_err(told)
    }

    async fn ready(&self) -> bool {
        self.0.ready().await
    }
}
